//! NAdam, as `torch.optim.NAdam`: Adam with Nesterov momentum and a momentum schedule.
//!
//! With gradient `g`, parameter `p`, state `exp_avg` (`m`), `exp_avg_sq` (`v`), step `t` and
//! `mu_product`, which PyTorch keeps per step as a one-element f32 state and which lives on
//! the host here like `step`, each step computes
//! ```text
//! g = -grad if maximize else grad
//! p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (NAdamW)
//! g = g + weight_decay * p          otherwise
//! mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)), and mu_{t+1} likewise
//! mu_product = mu_product * mu_t    (in f32, as PyTorch's state tensor)
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g^2
//! denom = sqrt(v / (1 - beta2^t)) + eps
//! p = p - lr * (1 - mu_t) / (1 - mu_product) * g / denom
//! p = p - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom
//! ```
//! Kernel: `nadam.wgsl`, beside this file.

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of NAdam, with PyTorch's names and defaults.
    pub struct NAdam {
        /// Learning rate.
        lr: f64 = 2e-3, NonNegative;
        /// Coefficients of the running averages of the gradient and of its square.
        betas: (f64, f64) = (0.9, 0.999), UnitInterval;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-8, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// How fast the momentum coefficient `mu_t` approaches `beta1`.
        momentum_decay: f64 = 4e-3, NonNegative;
        /// NAdamW: decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term.
        decoupled_weight_decay: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("NAdam"),
    scalars: NAdamScalars,
    checkpoint_name: "NAdam",
    state: [exp_avg, exp_avg_sq: non_negative],
    host_state: [mu_product],
    counts_steps: true,
}

impl NAdam {
    /// Whether a step decays the parameter itself (the shader's `DECOUPLED`).
    fn decays_param(&self) -> bool {
        self.decoupled_weight_decay && self.weight_decay != 0.0
    }

    /// The momentum coefficient of step `t`.
    fn mu(&self, t: u64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }
}

declare_scalars! {
    /// Per-step values of `nadam.wgsl`'s `Scalars`, field for field.
    pub struct NAdamScalars {
        /// betas.0
        beta1: f32,
        /// 1 - betas.0
        one_minus_beta1: f32,
        /// betas.1
        beta2: f32,
        /// 1 - betas.1
        one_minus_beta2: f32,
        /// 1 - beta2^t
        bias_correction2: f32,
        /// Term added to the denominator.
        eps: f32,
        /// lr * (1 - mu_t) / (1 - mu_product): the gradient's weight.
        grad_coef: f32,
        /// lr * mu_{t+1} / (1 - mu_product * mu_{t+1}): the momentum's weight.
        momentum_coef: f32,
        /// The parameter's multiplier: 1 - lr * weight_decay when decoupled, else 1.
        decay: f32,
    }
}

impl UpdateRule for NAdam {
    const SHADER: &'static str = include_str!("nadam.wgsl");

    fn name(&self) -> &'static str {
        match self.decoupled_weight_decay {
            false => "nadam",
            true => "nadamw",
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

    fn initial_host_state(&self) -> Vec<f64> {
        vec![1.0]
    }

    fn advance_host_state(&self, t: u64, host: &mut [f64]) {
        // PyTorch multiplies its f32 state tensor by the f32 rounding of mu_t.
        host[0] = (host[0] as f32 * self.mu(t) as f32) as f64;
    }

    fn scalars(&self, t: u64, host: &[f64]) -> NAdamScalars {
        let (beta1, beta2) = self.betas;
        let (mu, mu_next) = (self.mu(t), self.mu(t + 1));
        let mu_product = host[0];
        let decay = match self.decoupled_weight_decay {
            true => 1.0 - self.lr * self.weight_decay,
            false => 1.0,
        };
        NAdamScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2: (1.0 - beta2.powf(t as f64)) as f32,
            eps: self.eps as f32,
            grad_coef: (self.lr * (1.0 - mu) / (1.0 - mu_product)) as f32,
            momentum_coef: (self.lr * mu_next / (1.0 - mu_product * mu_next)) as f32,
            decay: decay as f32,
        }
    }

    fn twin_update(&self, s: &NAdamScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let decayed = match self.decays_param() {
            true => p * s.decay,
            false => p,
        };
        let m = s.beta1 * state[0] + s.one_minus_beta1 * g;
        let v = s.beta2 * state[1] + s.one_minus_beta2 * (g * g);
        state[0] = m;
        state[1] = v;
        let denom = (v / s.bias_correction2).sqrt() + s.eps;
        let stepped = decayed - s.grad_coef * (g / denom);
        stepped - s.momentum_coef * (m / denom)
    }
}

impl Unfused for NAdam {
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
        let denom = scratch;
        program.copy(denom, v);
        program.div_scalar(denom, s.bias_correction2);
        program.sqrt_in_place(denom);
        program.add_scalar(denom, s.eps);
        let update = Operand::Temp(2);
        program.scale(update, g, -s.grad_coef);
        program.div(update, denom);
        program.add(Operand::Param, update);
        program.scale(update, m, -s.momentum_coef);
        program.div(update, denom);
        program.add(Operand::Param, update);
    }
}

impl RegisteredRule for NAdam {
    const KEY: &'static str = "nadam";

    fn variants() -> Vec<Self> {
        vec![
            NAdam::default(),
            NAdam {
                weight_decay: 1e-2,
                decoupled_weight_decay: true,
                ..NAdam::default()
            },
        ]
    }

    fn every_flag() -> Vec<Self> {
        let mut rules = Vec::new();
        for maximize in [false, true] {
            for decoupled_weight_decay in [false, true] {
                rules.push(NAdam {
                    lr: 0.1,
                    betas: (0.8, 0.9),
                    eps: 1e-2,
                    weight_decay: 0.3,
                    momentum_decay: 0.1,
                    decoupled_weight_decay,
                    maximize,
                });
            }
        }
        rules
    }
}
