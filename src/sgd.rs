//! SGD with momentum, dampening and Nesterov, as `torch.optim.SGD`.
//!
//! With gradient `g`, parameter `p` and state `momentum_buffer` (`b`), each step computes
//! ```text
//! g = -grad if maximize else grad
//! g = g + weight_decay * p
//! if momentum != 0:
//!     b = g                                   on the first step
//!     b = momentum * b + (1 - dampening) * g  after it
//!     g = g + momentum * b  if nesterov  else  b
//! p = p - lr * g
//! ```
//! Kernel: `shaders/sgd.wgsl`.

use bytemuck::{Pod, Zeroable};

use crate::error::{non_negative, require, Result};
use crate::kernel::UpdateRule;
use crate::unfused::{Operand, Program};

/// Hyperparameters of SGD, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// Per-step values of `shaders/sgd.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SgdScalars {
    pub lr: f32,
    pub momentum: f32,
    pub one_minus_dampening: f32,
    /// 1 on the first step, when the momentum buffer is set to the gradient itself.
    pub first_step: u32,
}

impl UpdateRule for Sgd {
    type Scalars = SgdScalars;
    const SHADER: &'static str = include_str!("../shaders/sgd.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["momentum_buffer"];
    const COUNTS_STEPS: bool = false;

    fn name(&self) -> &'static str {
        match (self.momentum != 0.0, self.nesterov) {
            (false, _) => "sgd",
            (true, false) => "sgd-momentum",
            (true, true) => "sgd-nesterov",
        }
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        non_negative("momentum", self.momentum)?;
        non_negative("weight_decay", self.weight_decay)?;
        require(
            self.dampening.is_finite(),
            "dampening",
            self.dampening,
            "must be finite",
        )?;
        if self.nesterov {
            require(
                self.momentum > 0.0,
                "momentum",
                self.momentum,
                "nesterov requires momentum > 0",
            )?;
            require(
                self.dampening == 0.0,
                "dampening",
                self.dampening,
                "nesterov requires dampening = 0",
            )?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn keeps_state(&self, name: &str) -> bool {
        name == "momentum_buffer" && self.momentum != 0.0
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn l2_weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MOMENTUM", self.momentum != 0.0),
            ("NESTEROV", self.nesterov),
        ]
    }

    fn scalars(&self, t: u64) -> SgdScalars {
        SgdScalars {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            first_step: (t == 1) as u32,
        }
    }

    fn twin_update(&self, s: &SgdScalars, p: f32, mut g: f32, state: &mut [f32]) -> f32 {
        if self.momentum != 0.0 {
            let buf = if s.first_step == 1 {
                g
            } else {
                s.momentum * state[0] + s.one_minus_dampening * g
            };
            state[0] = buf;
            g = if self.nesterov {
                g + s.momentum * buf
            } else {
                buf
            };
        }
        p - s.lr * g
    }

    fn unfused(&self, t: u64, program: &mut Program) {
        let s = self.scalars(t);
        let mut g = program.gradient(self.maximize, self.weight_decay as f32);
        if self.momentum != 0.0 {
            let (buf, scaled) = (Operand::State(0), Operand::Temp(1));
            if t == 1 {
                program.copy(buf, g);
            } else {
                program.mul_scalar(buf, s.momentum);
                program.scale(scaled, g, s.one_minus_dampening);
                program.add(buf, scaled);
            }
            g = if self.nesterov {
                program.scale(scaled, buf, s.momentum);
                program.add(scaled, g);
                scaled
            } else {
                buf
            };
        }
        let update = Operand::Temp(2);
        program.scale(update, g, -s.lr);
        program.add(Operand::Param, update);
    }
}
