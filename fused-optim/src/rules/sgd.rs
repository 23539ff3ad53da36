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

use crate::error::Result;
use crate::rule::check::require;
use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of SGD, with PyTorch's names and defaults.
    pub struct Sgd {
        /// Learning rate.
        lr: f64 = 1e-3, NonNegative;
        /// Momentum factor (0 keeps no momentum buffer).
        momentum: f64 = 0.0, NonNegative;
        /// Dampening for momentum: the gradient enters the buffer times `1 - dampening`.
        dampening: f64 = 0.0, Finite;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// Nesterov momentum.
        nesterov: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("SGD"),
    scalars: SgdScalars,
    checkpoint_name: "SGD",
    state: [momentum_buffer if momentum],
    counts_steps: false,
}

declare_scalars! {
    /// Per-step values of `sgd.wgsl`'s `Scalars`, field for field.
    pub struct SgdScalars {
        /// Learning rate.
        lr: f32,
        /// Momentum factor (0 keeps no momentum buffer).
        momentum: f32,
        /// 1 - dampening
        one_minus_dampening: f32,
        /// 1 on the first step, when the momentum buffer is set to the gradient itself.
        first_step: u32,
    }
}

impl UpdateRule for Sgd {
    const SHADER: &'static str = include_str!("sgd.wgsl");

    fn name(&self) -> &'static str {
        match (self.momentum != 0.0, self.nesterov) {
            (false, _) => "sgd",
            (true, false) => "sgd-momentum",
            (true, true) => "sgd-nesterov",
        }
    }

    fn validate_combination(&self) -> Result<()> {
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
}

impl Unfused for Sgd {
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
