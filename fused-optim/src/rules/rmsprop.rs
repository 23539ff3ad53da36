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

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of RMSprop, with PyTorch's names and defaults.
    pub struct RmsProp {
        /// Learning rate.
        lr: f64 = 1e-2, NonNegative;
        /// Smoothing constant of the running average of the squared gradient.
        alpha: f64 = 0.99, NonNegative;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-8, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// Momentum factor (0 keeps no momentum buffer).
        momentum: f64 = 0.0, NonNegative;
        /// Normalize by an estimate of the gradient's variance instead of its second moment.
        centered: bool = false;
        /// Put epsilon inside the square root, `sqrt(v + eps)`, the other common convention
        /// (Keras, TensorFlow, many papers). PyTorch adds it outside: `sqrt(v) + eps`.
        eps_inside_sqrt: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("RMSprop"),
    not_in_torch: [eps_inside_sqrt],
    scalars: RmsPropScalars,
    checkpoint_name: "RMSprop",
    state: [square_avg: non_negative, momentum_buffer if momentum, grad_avg if centered],
    counts_steps: true,
}

declare_scalars! {
    /// Per-step values of `rmsprop.wgsl`'s `Scalars`, field for field.
    pub struct RmsPropScalars {
        /// Learning rate.
        lr: f32,
        /// Smoothing constant of the running average of the squared gradient.
        alpha: f32,
        /// 1 - alpha
        one_minus_alpha: f32,
        /// Term added to the denominator for numerical stability.
        eps: f32,
        /// Momentum factor (0 keeps no momentum buffer).
        momentum: f32,
    }
}

impl UpdateRule for RmsProp {
    const SHADER: &'static str = include_str!("rmsprop.wgsl");

    fn name(&self) -> &'static str {
        match (self.centered, self.momentum > 0.0) {
            (false, false) => "rmsprop",
            (false, true) => "rmsprop-momentum",
            (true, false) => "rmsprop-centered",
            (true, true) => "rmsprop-centered-momentum",
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
}

impl Unfused for RmsProp {
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
