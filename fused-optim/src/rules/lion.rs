//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
//! interpolated momentum, with decoupled weight decay. Not in `torch.optim`; the names and
//! defaults are the paper's (lr 1e-4, betas (0.9, 0.99), weight decay 0), and `maximize`
//! follows `torch.optim`'s convention.
//!
//! With gradient `g`, parameter `p` and state `exp_avg` (`m`), each step computes
//! ```text
//! g = -grad if maximize else grad
//! c = beta1 * m + (1 - beta1) * g
//! p = p * (1 - lr * weight_decay) - lr * sign(c)
//! m = beta2 * m + (1 - beta2) * g
//! ```
//! with `sign(0) = 0`. Kernel: `lion.wgsl`, beside this file.

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of Lion, with the paper's names and defaults.
    pub struct Lion {
        /// Learning rate: the size of every element's step.
        lr: f64 = 1e-4, NonNegative;
        /// Interpolation coefficient of the update direction, and of the momentum's average.
        betas: (f64, f64) = (0.9, 0.99), UnitInterval;
        /// Decoupled weight decay: the parameter is scaled by `1 - lr * weight_decay`.
        weight_decay: f64 = 0.0, NonNegative;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: None,
    scalars: LionScalars,
    checkpoint_name: "Lion",
    state: [exp_avg],
    counts_steps: false,
}

declare_scalars! {
    /// Per-step values of `lion.wgsl`'s `Scalars`, field for field.
    pub struct LionScalars {
        /// Learning rate.
        lr: f32,
        /// betas.0
        beta1: f32,
        /// 1 - betas.0
        one_minus_beta1: f32,
        /// betas.1
        beta2: f32,
        /// 1 - betas.1
        one_minus_beta2: f32,
        /// The parameter's multiplier, 1 - lr * weight_decay (exactly 1 without weight decay).
        decay: f32,
    }
}

/// `sign` as WGSL and PyTorch define it: 1, -1, or 0 for a zero (`f32::signum` gives 1 for +0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl UpdateRule for Lion {
    const SHADER: &'static str = include_str!("lion.wgsl");

    fn name(&self) -> &'static str {
        "lion"
    }

    fn l2_weight_decay(&self) -> f64 {
        0.0
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    fn scalars(&self, _t: u64, _host: &[f64]) -> LionScalars {
        let (beta1, beta2) = self.betas;
        LionScalars {
            lr: self.lr as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
        }
    }

    fn twin_update(&self, s: &LionScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let m = state[0];
        let c = s.beta1 * m + s.one_minus_beta1 * g;
        state[0] = s.beta2 * m + s.one_minus_beta2 * g;
        p * s.decay - s.lr * sign(c)
    }
}

impl Unfused for Lion {
    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, 0.0);
        let (m, c, scratch) = (Operand::State(0), Operand::Temp(1), Operand::Temp(2));
        program.scale(c, m, s.beta1);
        program.scale(scratch, g, s.one_minus_beta1);
        program.add(c, scratch);
        if self.weight_decay != 0.0 {
            program.mul_scalar(Operand::Param, s.decay);
        }
        program.sign(scratch, c);
        program.mul_scalar(scratch, -s.lr);
        program.add(Operand::Param, scratch);
        program.mul_scalar(m, s.beta2);
        program.scale(scratch, g, s.one_minus_beta2);
        program.add(m, scratch);
    }
}

impl RegisteredRule for Lion {
    const KEY: &'static str = "lion";

    fn variants() -> Vec<Self> {
        vec![Lion::default()]
    }

    fn every_flag() -> Vec<Self> {
        [false, true]
            .into_iter()
            .map(|maximize| Lion {
                lr: 0.1,
                betas: (0.8, 0.9),
                weight_decay: 0.3,
                maximize,
            })
            .collect()
    }
}
