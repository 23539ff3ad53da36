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

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::rule::check::{non_negative, positive, unit_interval};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, RegisteredRule, UpdateRule};

/// Hyperparameters of Adamax, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Adamax {
    /// Learning rate.
    pub lr: f64,
    /// Coefficients of the running average of the gradient and of the infinity norm.
    pub betas: (f64, f64),
    /// Term added to the gradient's magnitude before the infinity norm's maximum.
    pub eps: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient.
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Per-step values of `adamax.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AdamaxScalars {
    /// betas.0
    pub beta1: f32,
    /// 1 - betas.0
    pub one_minus_beta1: f32,
    /// betas.1
    pub beta2: f32,
    /// Term added to the gradient's magnitude.
    pub eps: f32,
    /// lr / (1 - beta1^t)
    pub clr: f32,
}

impl UpdateRule for Adamax {
    type Scalars = AdamaxScalars;
    const SHADER: &'static str = include_str!("adamax.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["exp_avg", "exp_inf"];
    const NON_NEGATIVE: &'static [&'static str] = &["exp_inf"];
    const COUNTS_STEPS: bool = true;
    const CHECKPOINT_NAME: &'static str = "Adamax";

    fn name(&self) -> &'static str {
        "adamax"
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        positive("eps", self.eps)?;
        unit_interval("betas.0", self.betas.0)?;
        unit_interval("betas.1", self.betas.1)?;
        non_negative("weight_decay", self.weight_decay)
    }

    hyperparameters!(lr, betas, eps, weight_decay, maximize);

    fn keeps_state(&self, name: &str) -> bool {
        Self::STATE_SLOTS.contains(&name)
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
