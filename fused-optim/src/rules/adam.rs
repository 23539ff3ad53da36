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

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::rule::check::{non_negative, positive, unit_interval};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, Hyperparameter, RegisteredRule, UpdateRule};

/// Hyperparameters of Adam, with PyTorch's names and defaults. [`Adam::adamw`] gives AdamW's.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and of its square.
    pub betas: (f64, f64),
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
    pub weight_decay: f64,
    /// AdamW: decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term to the gradient.
    pub decoupled_weight_decay: bool,
    /// Use the maximum of all second moments so far (AMSGrad).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl Adam {
    /// `torch.optim.AdamW`'s defaults: Adam with decoupled weight decay 1e-2
    /// (`AdamW::default().into()`).
    pub fn adamw() -> Self {
        AdamW::default().into()
    }
}

/// `torch.optim.AdamW` under its own name and defaults (`weight_decay` 1e-2): Adam with
/// decoupled weight decay, the same kernel, state and checkpoints (a checkpoint of either
/// restores into the other). Its `decoupled_weight_decay` hyperparameter is always true, as
/// in AdamW's `param_groups`; setting it false is refused (that is [`Adam`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and of its square.
    pub betas: (f64, f64),
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay: the parameter is multiplied by `1 - lr * weight_decay`.
    pub weight_decay: f64,
    /// Use the maximum of all second moments so far (AMSGrad).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        let adam = Adam::default();
        Self {
            lr: adam.lr,
            betas: adam.betas,
            eps: adam.eps,
            weight_decay: 1e-2,
            amsgrad: adam.amsgrad,
            maximize: adam.maximize,
        }
    }
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
                reason: "AdamW always decouples weight decay; use Adam for an L2 penalty",
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

/// AdamW is Adam's rule under another name: every item is Adam's.
impl UpdateRule for AdamW {
    type Scalars = AdamScalars;
    const SHADER: &'static str = Adam::SHADER;
    const STATE_SLOTS: &'static [&'static str] = Adam::STATE_SLOTS;
    const NON_NEGATIVE: &'static [&'static str] = Adam::NON_NEGATIVE;
    const COUNTS_STEPS: bool = Adam::COUNTS_STEPS;
    const CHECKPOINT_NAME: &'static str = Adam::CHECKPOINT_NAME;

    fn name(&self) -> &'static str {
        self.adam().name()
    }

    fn validate(&self) -> Result<()> {
        self.adam().validate()
    }

    fn hyperparameters(&self) -> Vec<(&'static str, Hyperparameter)> {
        self.adam().hyperparameters()
    }

    fn set_hyperparameter(&mut self, name: &str, value: Hyperparameter) -> Result<()> {
        let mut adam = self.adam();
        adam.set_hyperparameter(name, value)?;
        *self = adam.try_into()?;
        Ok(())
    }

    fn keeps_state(&self, name: &str) -> bool {
        self.adam().keeps_state(name)
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

    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        self.adam().unfused(t, host, program)
    }
}

impl Adam {
    /// Whether a step decays the parameter itself (AdamW with a non-zero weight decay; the
    /// shader's `DECOUPLED`), as PyTorch skips the decay for a zero one.
    fn decays_param(&self) -> bool {
        self.decoupled_weight_decay && self.weight_decay != 0.0
    }
}

/// Per-step values of `adam.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AdamScalars {
    /// lr / (1 - beta1^t)
    pub step_size: f32,
    /// betas.0
    pub beta1: f32,
    /// 1 - betas.0
    pub one_minus_beta1: f32,
    /// betas.1
    pub beta2: f32,
    /// 1 - betas.1
    pub one_minus_beta2: f32,
    /// sqrt(1 - beta2^t)
    pub bias_correction2_sqrt: f32,
    /// Term added to the denominator for numerical stability.
    pub eps: f32,
    /// The parameter's multiplier: 1 - lr * weight_decay for AdamW, 1 for Adam.
    pub decay: f32,
}

impl UpdateRule for Adam {
    type Scalars = AdamScalars;
    const SHADER: &'static str = include_str!("adam.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
    const NON_NEGATIVE: &'static [&'static str] = &["exp_avg_sq", "max_exp_avg_sq"];
    const COUNTS_STEPS: bool = true;
    const CHECKPOINT_NAME: &'static str = "Adam";

    fn name(&self) -> &'static str {
        match (self.decoupled_weight_decay, self.amsgrad) {
            (false, false) => "adam",
            (false, true) => "adam-amsgrad",
            (true, false) => "adamw",
            (true, true) => "adamw-amsgrad",
        }
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        positive("eps", self.eps)?;
        unit_interval("betas.0", self.betas.0)?;
        unit_interval("betas.1", self.betas.1)?;
        non_negative("weight_decay", self.weight_decay)
    }

    hyperparameters!(lr, betas, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize);

    fn keeps_state(&self, name: &str) -> bool {
        match name {
            "exp_avg" | "exp_avg_sq" => true,
            "max_exp_avg_sq" => self.amsgrad,
            _ => false,
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
