//! The benchmark's floor as an update rule: a kernel that moves exactly the bytes a rule with
//! `states` state buffers moves and does no update arithmetic (shaders/roofline.wgsl). Being a
//! rule, it runs through the same engine, windows and timing as the rules it is compared with.

use bytemuck::{Pod, Zeroable};

use crate::error::{require, Result};
use crate::kernel::UpdateRule;
use crate::unfused::{Operand, Program};

/// Moves the bytes of a rule with `states` (0 to [`Roofline::MAX_STATES`]) state buffers:
/// `p += g` and `state += p` for each kept state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roofline {
    pub states: usize,
}

impl Roofline {
    /// Most state buffers any rule keeps (Adam with amsgrad, centered RMSprop with momentum).
    pub const MAX_STATES: usize = 3;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RooflineScalars {
    pub unused: f32,
}

impl UpdateRule for Roofline {
    type Scalars = RooflineScalars;
    const SHADER: &'static str = include_str!("../shaders/roofline.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["state0", "state1", "state2"];
    const COUNTS_STEPS: bool = false;

    fn name(&self) -> &'static str {
        ["roofline-0", "roofline-1", "roofline-2", "roofline-3"][self.states.min(3)]
    }

    fn validate(&self) -> Result<()> {
        require(
            self.states <= Self::MAX_STATES,
            "states",
            self.states as f64,
            "the roofline kernel has three state slots",
        )
    }

    fn lr(&self) -> f64 {
        0.0
    }

    fn set_lr(&mut self, _lr: f64) {}

    fn keeps_state(&self, name: &str) -> bool {
        Self::STATE_SLOTS[..self.states.min(3)].contains(&name)
    }

    fn maximize(&self) -> bool {
        false
    }

    fn l2_weight_decay(&self) -> f64 {
        0.0
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("STATE0", self.states > 0),
            ("STATE1", self.states > 1),
            ("STATE2", self.states > 2),
        ]
    }

    fn scalars(&self, _t: u64) -> RooflineScalars {
        RooflineScalars { unused: 0.0 }
    }

    fn twin_update(&self, _s: &RooflineScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        for value in &mut state[..self.states] {
            *value += p;
        }
        p + g
    }

    fn unfused(&self, _t: u64, program: &mut Program) {
        for slot in 0..self.states {
            program.add(Operand::State(slot), Operand::Param);
        }
        program.add(Operand::Param, Operand::Grad);
    }
}
