//! Adam and AdamW, as `torch.optim.Adam` and `torch.optim.AdamW` ([`Adam`] with
//! `decoupled_weight_decay`, or [`AdamW`] under its own name and defaults).
//!
//! With gradient `g`, parameter `p`, state `exp_avg` (`m`), `exp_avg_sq` (`v`),
//! `max_exp_avg_sq` (`v_max`, amsgrad only) and step `t`, each step computes
//! ```text
//! g = -grad if maximize else grad
//! p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (AdamW)
//! g = g + weight_decay * p          otherwise (Adam's L2 penalty)
//! m = beta1 * m + (1 - beta1) * g
//! v = beta2 * v + (1 - beta2) * g^2
//! v_max = max(v_max, v); use v_max for v below   if amsgrad
//! p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! Epsilon is added after the square root of the bias-corrected second moment, as in PyTorch.
//! Kernel: `adam.wgsl`, beside this file.

use crate::error::{Error, Result};
use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of Adam, with PyTorch's names and defaults. [`Adam::adamw`] gives AdamW's.
    pub struct Adam {
        /// Learning rate.
        lr: f64 = 1e-3, NonNegative;
        /// Coefficients of the running averages of the gradient and of its square.
        betas: (f64, f64) = (0.9, 0.999), UnitInterval;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-8, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// AdamW: decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term to the gradient.
        decoupled_weight_decay: bool = false;
        /// Use the maximum of all second moments so far (AMSGrad).
        amsgrad: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("Adam"),
    scalars: AdamScalars,
    checkpoint_name: "Adam",
    state: [exp_avg, exp_avg_sq: non_negative, max_exp_avg_sq: non_negative if amsgrad],
    counts_steps: true,
}

impl Adam {
    /// `torch.optim.AdamW`'s defaults: Adam with decoupled weight decay 1e-2
    /// (`AdamW::default().into()`).
    pub fn adamw() -> Self {
        AdamW::default().into()
    }
}

/// Why AdamW refuses `decoupled_weight_decay = false`, set or converted from Adam.
const ALWAYS_DECOUPLED: &str = "AdamW always decouples weight decay; use Adam for an L2 penalty";

declare_rule! {
    /// `torch.optim.AdamW` under its own name and defaults (`weight_decay` 1e-2): Adam with
    /// decoupled weight decay, the same kernel, state and checkpoints (a checkpoint of either
    /// restores into the other). Its `decoupled_weight_decay` hyperparameter is always true, as
    /// in AdamW's `param_groups`; setting it false is refused (that is [`Adam`]).
    pub struct AdamW {
        /// Learning rate.
        lr: f64 = 1e-3, NonNegative;
        /// Coefficients of the running averages of the gradient and of its square.
        betas: (f64, f64) = (0.9, 0.999), UnitInterval;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-8, Positive;
        /// Decoupled weight decay: the parameter is multiplied by `1 - lr * weight_decay`.
        weight_decay: f64 = 1e-2, NonNegative;
        /// Use the maximum of all second moments so far (AMSGrad).
        amsgrad: bool = false;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("AdamW"),
    fixed: [decoupled_weight_decay = true => ALWAYS_DECOUPLED],
    scalars: AdamScalars,
    same_rule_as: Adam,
}

impl From<AdamW> for Adam {
    fn from(w: AdamW) -> Self {
        Adam {
            lr: w.lr,
            betas: w.betas,
            eps: w.eps,
            weight_decay: w.weight_decay,
            decoupled_weight_decay: true,
            amsgrad: w.amsgrad,
            maximize: w.maximize,
        }
    }
}

impl TryFrom<Adam> for AdamW {
    type Error = Error;

    /// Adam with decoupled weight decay as AdamW; refused for Adam's L2 penalty.
    fn try_from(adam: Adam) -> Result<Self> {
        if !adam.decoupled_weight_decay {
            return Err(Error::InvalidConfig {
                field: "decoupled_weight_decay",
                value: 0.0,
                reason: ALWAYS_DECOUPLED,
            });
        }
        Ok(Self {
            lr: adam.lr,
            betas: adam.betas,
            eps: adam.eps,
            weight_decay: adam.weight_decay,
            amsgrad: adam.amsgrad,
            maximize: adam.maximize,
        })
    }
}

impl AdamW {
    /// The same configuration as [`Adam`], whose rule it runs.
    fn adam(&self) -> Adam {
        self.clone().into()
    }
}

/// AdamW runs Adam's rule: every item below is Adam's.
impl UpdateRule for AdamW {
    const SHADER: &'static str = Adam::SHADER;

    fn name(&self) -> &'static str {
        self.adam().name()
    }

    fn l2_weight_decay(&self) -> f64 {
        0.0
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        self.adam().flags()
    }

    fn scalars(&self, t: u64, host: &[f64]) -> AdamScalars {
        self.adam().scalars(t, host)
    }

    fn twin_update(&self, s: &AdamScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        self.adam().twin_update(s, p, g, state)
    }
}

impl Adam {
    /// Whether a step decays the parameter itself (AdamW with a non-zero weight decay; the
    /// shader's `DECOUPLED`), as PyTorch skips the decay for a zero one.
    fn decays_param(&self) -> bool {
        self.decoupled_weight_decay && self.weight_decay != 0.0
    }
}

declare_scalars! {
    /// Per-step values of `adam.wgsl`'s `Scalars`, field for field.
    pub struct AdamScalars {
        /// lr / (1 - beta1^t)
        step_size: f32,
        /// betas.0
        beta1: f32,
        /// 1 - betas.0
        one_minus_beta1: f32,
        /// betas.1
        beta2: f32,
        /// 1 - betas.1
        one_minus_beta2: f32,
        /// sqrt(1 - beta2^t)
        bias_correction2_sqrt: f32,
        /// Term added to the denominator for numerical stability.
        eps: f32,
        /// The parameter's multiplier: 1 - lr * weight_decay for AdamW, 1 for Adam.
        decay: f32,
    }
}

impl UpdateRule for Adam {
    const SHADER: &'static str = include_str!("adam.wgsl");

    fn name(&self) -> &'static str {
        match (self.decoupled_weight_decay, self.amsgrad) {
            (false, false) => "adam",
            (false, true) => "adam-amsgrad",
            (true, false) => "adamw",
            (true, true) => "adamw-amsgrad",
        }
    }

    fn l2_weight_decay(&self) -> f64 {
        if self.decoupled_weight_decay {
            0.0
        } else {
            self.weight_decay
        }
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("AMSGRAD", self.amsgrad),
            ("DECOUPLED", self.decays_param()),
        ]
    }

    fn scalars(&self, t: u64, _host: &[f64]) -> AdamScalars {
        let (beta1, beta2) = self.betas;
        let t = t as f64;
        let decay = if self.decoupled_weight_decay {
            1.0 - self.lr * self.weight_decay
        } else {
            1.0
        };
        AdamScalars {
            step_size: (self.lr / (1.0 - beta1.powf(t))) as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
            eps: self.eps as f32,
            decay: decay as f32,
        }
    }

    fn twin_update(&self, s: &AdamScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let decayed = match self.decays_param() {
            true => p * s.decay,
            false => p,
        };
        let m = s.beta1 * state[0] + s.one_minus_beta1 * g;
        let mut v = s.beta2 * state[1] + s.one_minus_beta2 * (g * g);
        state[0] = m;
        state[1] = v;
        if self.amsgrad {
            v = state[2].max(v);
            state[2] = v;
        }
        let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
        decayed - s.step_size * (m / denom)
    }
}

impl Unfused for Adam {
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
        let second_moment = if self.amsgrad {
            program.max(Operand::State(2), v);
            Operand::State(2)
        } else {
            v
        };
        let denom = scratch;
        program.sqrt(denom, second_moment);
        program.div_scalar(denom, s.bias_correction2_sqrt);
        program.add_scalar(denom, s.eps);
        let update = Operand::Temp(2);
        program.scale(update, m, -s.step_size);
        program.div(update, denom);
        program.add(Operand::Param, update);
    }
}

impl RegisteredRule for Adam {
    const KEY: &'static str = "adam";

    fn variants() -> Vec<Self> {
        vec![
            Adam::default(),
            Adam {
                amsgrad: true,
                ..Adam::default()
            },
            Adam::adamw(),
        ]
    }

    fn every_flag() -> Vec<Self> {
        let mut rules = Vec::new();
        for maximize in [false, true] {
            for amsgrad in [false, true] {
                for decoupled_weight_decay in [false, true] {
                    rules.push(Adam {
                        lr: 0.1,
                        betas: (0.8, 0.9),
                        eps: 1e-2,
                        weight_decay: 0.3,
                        decoupled_weight_decay,
                        amsgrad,
                        maximize,
                    });
                }
            }
        }
        rules
    }
}
