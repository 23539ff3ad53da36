//! Adamax, as `torch.optim.Adamax`: Adam with the infinity norm in place of the second moment.
//!
//! With gradient `g`, parameter `p`, state `exp_avg` (`m`), `exp_inf` (`u`) and step `t`, each
//! step computes
//! ```text
//! g = -grad if maximize else grad
//! g = g + weight_decay * p
//! m = beta1 * m + (1 - beta1) * g
//! u = max(beta2 * u, |g| + eps)
//! p = p - lr / (1 - beta1^t) * m / u
//! ```
//! Kernel: `adamax.wgsl`, beside this file.

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of Adamax, with PyTorch's names and defaults.
    pub struct Adamax {
        /// Learning rate.
        lr: f64 = 2e-3, NonNegative;
        /// Coefficients of the running average of the gradient and of the infinity norm.
        betas: (f64, f64) = (0.9, 0.999), UnitInterval;
        /// Term added to the gradient's magnitude before the infinity norm's maximum.
        eps: f64 = 1e-8, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient.
        weight_decay: f64 = 0.0, NonNegative;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("Adamax"),
    scalars: AdamaxScalars,
    checkpoint_name: "Adamax",
    state: [exp_avg, exp_inf: non_negative],
    counts_steps: true,
}

declare_scalars! {
    /// Per-step values of `adamax.wgsl`'s `Scalars`, field for field.
    pub struct AdamaxScalars {
        /// betas.0
        beta1: f32,
        /// 1 - betas.0
        one_minus_beta1: f32,
        /// betas.1
        beta2: f32,
        /// Term added to the gradient's magnitude.
        eps: f32,
        /// lr / (1 - beta1^t)
        clr: f32,
    }
}

impl UpdateRule for Adamax {
    const SHADER: &'static str = include_str!("adamax.wgsl");

    fn name(&self) -> &'static str {
        "adamax"
    }

    fn l2_weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    fn scalars(&self, t: u64, _host: &[f64]) -> AdamaxScalars {
        let (beta1, beta2) = self.betas;
        AdamaxScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            eps: self.eps as f32,
            clr: (self.lr / (1.0 - beta1.powf(t as f64))) as f32,
        }
    }

    fn twin_update(&self, s: &AdamaxScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let m = s.beta1 * state[0] + s.one_minus_beta1 * g;
        let u = (s.beta2 * state[1]).max(g.abs() + s.eps);
        state[0] = m;
        state[1] = u;
        p - s.clr * (m / u)
    }
}

impl Unfused for Adamax {
    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, self.weight_decay as f32);
        let (m, u, scratch) = (Operand::State(0), Operand::State(1), Operand::Temp(1));
        program.mul_scalar(m, s.beta1);
        program.scale(scratch, g, s.one_minus_beta1);
        program.add(m, scratch);
        program.mul_scalar(u, s.beta2);
        program.abs(scratch, g);
        program.add_scalar(scratch, s.eps);
        program.max(u, scratch);
        let update = Operand::Temp(2);
        program.scale(update, m, -s.clr);
        program.div(update, u);
        program.add(Operand::Param, update);
    }
}

impl RegisteredRule for Adamax {
    const KEY: &'static str = "adamax";

    fn variants() -> Vec<Self> {
        vec![Adamax::default()]
    }

    fn every_flag() -> Vec<Self> {
        [false, true]
            .into_iter()
            .map(|maximize| Adamax {
                lr: 0.1,
                betas: (0.8, 0.9),
                eps: 1e-2,
                weight_decay: 0.3,
                maximize,
            })
            .collect()
    }
}
