//! The benchmark's floor as an update rule: a kernel that moves exactly the bytes a rule with
//! `states` state buffers moves and does no update arithmetic (`roofline.wgsl`, beside this file). Being a
//! rule, it runs through the same engine, windows and timing as the rules it is compared with.

use crate::error::Result;
use crate::format::Precision;
use crate::rule::check::require;
use crate::rule::declaration::{Declared, Field};
use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_scalars, UpdateRule};

/// Moves the bytes of a rule with `states` (0 to [`Roofline::MAX_STATES`]) state buffers:
/// `p += g` and `state += p` for each kept state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roofline {
    /// State buffers to read and write, as many as the rule compared with keeps.
    pub states: usize,
}

impl Roofline {
    /// Most state buffers any rule keeps (Adam with amsgrad, centered RMSprop with momentum).
    pub const MAX_STATES: usize = 3;

    /// The format floor of `rule` in `precision`: a roofline with as many state buffers as
    /// `rule` keeps, each stored as `precision` stores that state (the roofline's slots,
    /// `state0`.., take the rule's kept slots' formats in slot order), so it moves the rule's
    /// bytes through the same codecs with no update arithmetic.
    pub fn format_floor<R: UpdateRule>(rule: &R, precision: &Precision) -> (Self, Precision) {
        let mut floor_precision = precision.clone();
        floor_precision.state_overrides = R::STATE_SLOTS
            .iter()
            .filter(|slot| rule.keeps_state(slot))
            .zip(Self::STATE_SLOTS)
            .map(|(slot, state)| (state.to_string(), precision.state_format(slot)))
            .collect();
        let states = crate::rule::kept_states(rule);
        (Self { states }, floor_precision)
    }

    /// How many f32 elements this roofline steps over to move `bytes` per step: the length of
    /// the byte floor, a plain stream of a compact format's bytes with no decoding.
    pub fn byte_floor_len(&self, bytes: u64) -> usize {
        let kept = Self::STATE_SLOTS[..self.states.min(Self::MAX_STATES)]
            .iter()
            .copied();
        let per_element = Precision::default().bytes_per_step(1, kept);
        (bytes / per_element).max(1) as usize
    }
}

declare_scalars! {
    /// The roofline's per-step values: none, but WGSL structs cannot be empty.
    pub struct RooflineScalars {
        /// Unused.
        unused: f32,
    }
}

impl Declared for Roofline {
    type Scalars = RooflineScalars;
    const CHECKPOINT_NAME: &'static str = "Roofline";
    const TORCH_CLASS: Option<&'static str> = None;
    const HYPERPARAMETERS: &'static [Field<Self>] = &[];
    const NOT_IN_TORCH: &'static [&'static str] = &[];
    const STATE_SLOTS: &'static [&'static str] = &["state0", "state1", "state2"];
    const NON_NEGATIVE: &'static [&'static str] = &[];
    const KEPT_WITH: &'static [(&'static str, &'static str)] = &[];
    const HOST_STATE: &'static [&'static str] = &[];
    const COUNTS_STEPS: bool = false;
}

impl UpdateRule for Roofline {
    const SHADER: &'static str = include_str!("roofline.wgsl");

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

    fn keeps_state(&self, name: &str) -> bool {
        Self::STATE_SLOTS[..self.states.min(3)].contains(&name)
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

    fn scalars(&self, _t: u64, _host: &[f64]) -> RooflineScalars {
        RooflineScalars { unused: 0.0 }
    }

    fn twin_update(&self, _s: &RooflineScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        for value in &mut state[..self.states] {
            *value += p;
        }
        p + g
    }
}

impl Unfused for Roofline {
    fn unfused(&self, _t: u64, _host: &[f64], program: &mut Program) {
        for slot in 0..self.states {
            program.add(Operand::State(slot), Operand::Param);
        }
        program.add(Operand::Param, Operand::Grad);
    }
}
