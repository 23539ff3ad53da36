//! RMSprop, as `torch.optim.RMSprop`.
//!
//! With gradient `g`, parameter `p` and state `square_avg` (`v`), `grad_avg` (centered only)
//! and `momentum_buffer` (`b`, momentum > 0 only), each step computes
//! ```text
//! g = -grad if maximize else grad
//! g = g + weight_decay * p
//! v = alpha * v + (1 - alpha) * g^2
//! if centered: grad_avg = alpha * grad_avg + (1 - alpha) * g;  v' = v - grad_avg^2  else v' = v
//! avg = sqrt(v') + eps              (PyTorch's placement)
//! avg = sqrt(v' + eps)              (eps_inside_sqrt: Keras / TensorFlow's placement)
//! if momentum > 0: b = momentum * b + g / avg;  p = p - lr * b
//! else:            p = p - lr * g / avg
//! ```
//! Kernel: `rmsprop.wgsl`, beside this file.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::rule::check::{non_negative, positive};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, RegisteredRule, UpdateRule};

/// Hyperparameters of RMSprop, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant of the running average of the squared gradient.
    pub alpha: f64,
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
    pub weight_decay: f64,
    /// Momentum factor (0 keeps no momentum buffer).
    pub momentum: f64,
    /// Normalize by an estimate of the gradient's variance instead of its second moment.
    pub centered: bool,
    /// Put epsilon inside the square root, `sqrt(v + eps)`, the other common convention
    /// (Keras, TensorFlow, many papers). PyTorch adds it outside: `sqrt(v) + eps`.
    pub eps_inside_sqrt: bool,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            eps_inside_sqrt: false,
            maximize: false,
        }
    }
}

/// Per-step values of `rmsprop.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RmsPropScalars {
    /// Learning rate.
    pub lr: f32,
    /// Smoothing constant of the running average of the squared gradient.
    pub alpha: f32,
    /// 1 - alpha
    pub one_minus_alpha: f32,
    /// Term added to the denominator for numerical stability.
    pub eps: f32,
    /// Momentum factor (0 keeps no momentum buffer).
    pub momentum: f32,
}

impl UpdateRule for RmsProp {
    type Scalars = RmsPropScalars;
    const SHADER: &'static str = include_str!("rmsprop.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["square_avg", "momentum_buffer", "grad_avg"];
    const NON_NEGATIVE: &'static [&'static str] = &["square_avg"];
    const COUNTS_STEPS: bool = true;
    const CHECKPOINT_NAME: &'static str = "RMSprop";

    fn name(&self) -> &'static str {
        match (self.centered, self.momentum > 0.0) {
            (false, false) => "rmsprop",
            (false, true) => "rmsprop-momentum",
            (true, false) => "rmsprop-centered",
            (true, true) => "rmsprop-centered-momentum",
        }
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        positive("eps", self.eps)?;
        non_negative("momentum", self.momentum)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("alpha", self.alpha)
    }

    hyperparameters!(lr, alpha, eps, weight_decay, momentum, centered, eps_inside_sqrt, maximize);

    fn keeps_state(&self, name: &str) -> bool {
        match name {
            "square_avg" => true,
            "momentum_buffer" => self.momentum > 0.0,
            "grad_avg" => self.centered,
            _ => false,
        }
    }

    fn l2_weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("CENTERED", self.centered),
            ("MOMENTUM", self.momentum > 0.0),
            ("EPS_INSIDE_SQRT", self.eps_inside_sqrt),
        ]
    }

    fn scalars(&self, _t: u64, _host: &[f64]) -> RmsPropScalars {
        RmsPropScalars {
            lr: self.lr as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            momentum: self.momentum as f32,
        }
    }

    fn twin_update(&self, s: &RmsPropScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let v = s.alpha * state[0] + s.one_minus_alpha * (g * g);
        state[0] = v;
        let mut variance = v;
        if self.centered {
            let g_avg = s.alpha * state[2] + s.one_minus_alpha * g;
            state[2] = g_avg;
            variance = v - g_avg * g_avg;
        }
        let avg = if self.eps_inside_sqrt {
            (variance + s.eps).sqrt()
        } else {
            variance.sqrt() + s.eps
        };
        if self.momentum > 0.0 {
            let buf = s.momentum * state[1] + g / avg;
            state[1] = buf;
            p - s.lr * buf
        } else {
            p - s.lr * (g / avg)
        }
    }

    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, self.weight_decay as f32);
        let (square_avg, scratch, avg) = (Operand::State(0), Operand::Temp(1), Operand::Temp(2));
        program.mul_scalar(square_avg, s.alpha);
        program.square(scratch, g);
        program.mul_scalar(scratch, s.one_minus_alpha);
        program.add(square_avg, scratch);
        let mut variance = square_avg;
        if self.centered {
            let grad_avg = Operand::State(2);
            program.mul_scalar(grad_avg, s.alpha);
            program.scale(scratch, g, s.one_minus_alpha);
            program.add(grad_avg, scratch);
            program.square(avg, grad_avg);
            program.copy(scratch, square_avg);
            program.sub(scratch, avg);
            variance = scratch;
        }
        if self.eps_inside_sqrt {
            program.copy(avg, variance);
            program.add_scalar(avg, s.eps);
            program.sqrt_in_place(avg);
        } else {
            program.sqrt(avg, variance);
            program.add_scalar(avg, s.eps);
        }
        let update = Operand::Temp(3);
        program.copy(update, g);
        program.div(update, avg);
        if self.momentum > 0.0 {
            let buf = Operand::State(1);
            program.mul_scalar(buf, s.momentum);
            program.add(buf, update);
            program.scale(update, buf, -s.lr);
        } else {
            program.mul_scalar(update, -s.lr);
        }
        program.add(Operand::Param, update);
    }
}

impl RegisteredRule for RmsProp {
    const KEY: &'static str = "rmsprop";

    fn variants() -> Vec<Self> {
        vec![
            RmsProp::default(),
            RmsProp {
                centered: true,
                momentum: 0.9,
                ..RmsProp::default()
            },
        ]
    }

    fn every_flag() -> Vec<Self> {
        let mut rules = Vec::new();
        for maximize in [false, true] {
            for centered in [false, true] {
                for momentum in [0.0, 0.9] {
                    for eps_inside_sqrt in [false, true] {
                        rules.push(RmsProp {
                            lr: 0.1,
                            alpha: 0.9,
                            eps: 1e-2,
                            weight_decay: 0.3,
                            momentum,
                            centered,
                            eps_inside_sqrt,
                            maximize,
                        });
                    }
                }
            }
        }
        rules
    }
}
