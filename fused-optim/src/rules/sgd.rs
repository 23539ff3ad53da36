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
//! Kernel: `sgd.wgsl`, beside this file.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::rule::check::{non_negative, require};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, RegisteredRule, UpdateRule};

/// Hyperparameters of SGD, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 keeps no momentum buffer).
    pub momentum: f64,
    /// Dampening for momentum: the gradient enters the buffer times `1 - dampening`.
    pub dampening: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
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

/// Per-step values of `sgd.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SgdScalars {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 keeps no momentum buffer).
    pub momentum: f32,
    /// 1 - dampening
    pub one_minus_dampening: f32,
    /// 1 on the first step, when the momentum buffer is set to the gradient itself.
    pub first_step: u32,
}

impl UpdateRule for Sgd {
    type Scalars = SgdScalars;
    const SHADER: &'static str = include_str!("sgd.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["momentum_buffer"];
    const COUNTS_STEPS: bool = false;
    const CHECKPOINT_NAME: &'static str = "SGD";

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

    hyperparameters!(lr, momentum, dampening, weight_decay, nesterov, maximize);

    fn keeps_state(&self, name: &str) -> bool {
        name == "momentum_buffer" && self.momentum != 0.0
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

    fn scalars(&self, t: u64, _host: &[f64]) -> SgdScalars {
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

    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
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

impl RegisteredRule for Sgd {
    const KEY: &'static str = "sgd";

    fn variants() -> Vec<Self> {
        let momentum = Sgd {
            momentum: 0.9,
            ..Sgd::default()
        };
        vec![
            Sgd::default(),
            momentum.clone(),
            Sgd {
                nesterov: true,
                ..momentum
            },
        ]
    }

    fn every_flag() -> Vec<Self> {
        let mut rules = Vec::new();
        for maximize in [false, true] {
            for (momentum, dampening, nesterov) in
                [(0.0, 0.0, false), (0.9, 0.3, false), (0.9, 0.0, true)]
            {
                rules.push(Sgd {
                    lr: 0.1,
                    momentum,
                    dampening,
                    weight_decay: 0.3,
                    nesterov,
                    maximize,
                });
            }
        }
        rules
    }
}
