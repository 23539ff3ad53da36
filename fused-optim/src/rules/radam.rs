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

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of RAdam, with PyTorch's names and defaults.
    pub struct RAdam {
        /// Learning rate.
        lr: f64 = 1e-3, NonNegative;
        /// Coefficients of the running averages of the gradient and of its square.
        betas: (f64, f64) = (0.9, 0.999), UnitInterval;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-8, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// RAdamW: decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term.
        decoupled_weight_decay: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("RAdam"),
    scalars: RAdamScalars,
    checkpoint_name: "RAdam",
    state: [exp_avg, exp_avg_sq: non_negative],
    counts_steps: true,
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
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt()
        })
    }
}

declare_scalars! {
    /// Per-step values of `radam.wgsl`'s `Scalars`, field for field.
    pub struct RAdamScalars {
        /// betas.0
        beta1: f32,
        /// 1 - betas.0
        one_minus_beta1: f32,
        /// betas.1
        beta2: f32,
        /// 1 - betas.1
        one_minus_beta2: f32,
        /// Term added to the denominator.
        eps: f32,
        /// lr * rect * sqrt(1 - beta2^t) / (1 - beta1^t) when rectified, else lr / (1 - beta1^t).
        step_size: f32,
        /// 1 when this step is rectified (rho_t > 5), else 0.
        rectified: u32,
        /// The parameter's multiplier: 1 - lr * weight_decay when decoupled, else 1.
        decay: f32,
    }
}

impl UpdateRule for RAdam {
    const SHADER: &'static str = include_str!("radam.wgsl");

    fn name(&self) -> &'static str {
        match self.decoupled_weight_decay {
            false => "radam",
            true => "radamw",
        }
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
}

impl Unfused for RAdam {
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
