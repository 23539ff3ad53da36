//! RAdam, as `torch.optim.RAdam`: Adam whose adaptive step is rectified once the variance of
//! its second moment is tractable, and plain momentum SGD before.
//!
//! With gradient `g`, parameter `p`, state `exp_avg` (`m`), `exp_avg_sq` (`v`) and step `t`,
//! each step computes
//! ```text
//! g = -grad if maximize else grad
//! p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (RAdamW)
//! g = g + weight_decay * p          otherwise
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g^2
//! rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
//! if rho_t > 5:
//!     rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//!     p = p - lr * rect * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
//! else:
//!     p = p - lr / (1 - beta1^t) * m
//! ```
//! The branch depends on `t` alone, so the host picks it each step and the kernel follows a
//! per-step flag. Kernel: `radam.wgsl`, beside this file.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::rule::check::{non_negative, positive, unit_interval};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, RegisteredRule, UpdateRule};

/// Hyperparameters of RAdam, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RAdam {
    /// Learning rate.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and of its square.
    pub betas: (f64, f64),
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
    pub weight_decay: f64,
    /// RAdamW: decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term.
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl RAdam {
    /// Whether a step decays the parameter itself (the shader's `DECOUPLED`).
    fn decays_param(&self) -> bool {
        self.decoupled_weight_decay && self.weight_decay != 0.0
    }

    /// The rectification term of step `t`, or `None` while `rho_t <= 5`.
    fn rectification(&self, t: u64) -> Option<f64> {
        let beta2 = self.betas.1;
        let t = t as f64;
        let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * beta2.powf(t) / (1.0 - beta2.powf(t));
        (rho_t > 5.0).then(|| {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt()
        })
    }
}

/// Per-step values of `radam.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RAdamScalars {
    /// betas.0
    pub beta1: f32,
    /// 1 - betas.0
    pub one_minus_beta1: f32,
    /// betas.1
    pub beta2: f32,
    /// 1 - betas.1
    pub one_minus_beta2: f32,
    /// Term added to the denominator.
    pub eps: f32,
    /// lr * rect * sqrt(1 - beta2^t) / (1 - beta1^t) when rectified, else lr / (1 - beta1^t).
    pub step_size: f32,
    /// 1 when this step is rectified (rho_t > 5), else 0.
    pub rectified: u32,
    /// The parameter's multiplier: 1 - lr * weight_decay when decoupled, else 1.
    pub decay: f32,
}

impl UpdateRule for RAdam {
    type Scalars = RAdamScalars;
    const SHADER: &'static str = include_str!("radam.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];
    const NON_NEGATIVE: &'static [&'static str] = &["exp_avg_sq"];
    const COUNTS_STEPS: bool = true;
    const CHECKPOINT_NAME: &'static str = "RAdam";

    fn name(&self) -> &'static str {
        match self.decoupled_weight_decay {
            false => "radam",
            true => "radamw",
        }
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        positive("eps", self.eps)?;
        unit_interval("betas.0", self.betas.0)?;
        unit_interval("betas.1", self.betas.1)?;
        non_negative("weight_decay", self.weight_decay)
    }

    hyperparameters!(
        lr,
        betas,
        eps,
        weight_decay,
        decoupled_weight_decay,
        maximize
    );

    fn keeps_state(&self, name: &str) -> bool {
        Self::STATE_SLOTS.contains(&name)
    }

    fn l2_weight_decay(&self) -> f64 {
        match self.decoupled_weight_decay {
            true => 0.0,
            false => self.weight_decay,
        }
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("DECOUPLED", self.decays_param())]
    }

    fn scalars(&self, t: u64, _host: &[f64]) -> RAdamScalars {
        let (beta1, beta2) = self.betas;
        let bias_correction1 = 1.0 - beta1.powf(t as f64);
        let bias_correction2 = 1.0 - beta2.powf(t as f64);
        let rectification = self.rectification(t);
        let step_size = match rectification {
            Some(rect) => self.lr * rect * bias_correction2.sqrt() / bias_correction1,
            None => self.lr / bias_correction1,
        };
        let decay = match self.decoupled_weight_decay {
            true => 1.0 - self.lr * self.weight_decay,
            false => 1.0,
        };
        RAdamScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: self.eps as f32,
            step_size: step_size as f32,
            rectified: rectification.is_some() as u32,
            decay: decay as f32,
        }
    }

    fn twin_update(&self, s: &RAdamScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let decayed = match self.decays_param() {
            true => p * s.decay,
            false => p,
        };
        let m = s.beta1 * state[0] + s.one_minus_beta1 * g;
        let v = s.beta2 * state[1] + s.one_minus_beta2 * (g * g);
        state[0] = m;
        state[1] = v;
        match s.rectified {
            0 => decayed - s.step_size * m,
            _ => decayed - s.step_size * (m / (v.sqrt() + s.eps)),
        }
    }

    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, self.l2_weight_decay() as f32);
        if self.decays_param() {
            program.mul_scalar(Operand::Param, s.decay);
        }
        let (m, v, scratch) = (Operand::State(0), Operand::State(1), Operand::Temp(1));
        program.mul_scalar(m, s.beta1);
        program.scale(scratch, g, s.one_minus_beta1);
        program.add(m, scratch);
        program.mul_scalar(v, s.beta2);
        program.square(scratch, g);
        program.mul_scalar(scratch, s.one_minus_beta2);
        program.add(v, scratch);
        let update = Operand::Temp(2);
        program.scale(update, m, -s.step_size);
        if s.rectified == 1 {
            let denom = scratch;
            program.sqrt(denom, v);
            program.add_scalar(denom, s.eps);
            program.div(update, denom);
        }
        program.add(Operand::Param, update);
    }
}

impl RegisteredRule for RAdam {
    const KEY: &'static str = "radam";

    fn variants() -> Vec<Self> {
        vec![
            RAdam::default(),
            RAdam {
                weight_decay: 1e-2,
                decoupled_weight_decay: true,
                ..RAdam::default()
            },
        ]
    }

    fn every_flag() -> Vec<Self> {
        let mut rules = Vec::new();
        for maximize in [false, true] {
            for decoupled_weight_decay in [false, true] {
                rules.push(RAdam {
                    lr: 0.1,
                    // rho_t passes 5 at the sixth step (at any beta2), so tests that run both
                    // branches take at least six steps.
                    betas: (0.8, 0.9),
                    eps: 1e-2,
                    weight_decay: 0.3,
                    decoupled_weight_decay,
                    maximize,
                });
            }
        }
        rules
    }
}
