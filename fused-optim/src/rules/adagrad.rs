//! Adagrad, as `torch.optim.Adagrad`.
//!
//! With gradient `g`, parameter `p`, state `sum` (starting at `initial_accumulator_value`) and
//! step `t`, each step computes
//! ```text
//! g = -grad if maximize else grad
//! g = g + weight_decay * p
//! clr = lr / (1 + (t - 1) * lr_decay)
//! sum = sum + g^2
//! p = p - clr * g / (sqrt(sum) + eps)
//! ```
//! Kernel: `adagrad.wgsl`, beside this file.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::rule::check::{non_negative, positive};
use crate::rule::program::{Operand, Program};
use crate::rule::{hyperparameters, RegisteredRule, UpdateRule};

/// Hyperparameters of Adagrad, with PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Adagrad {
    /// Learning rate.
    pub lr: f64,
    /// Learning-rate decay: step t uses `lr / (1 + (t - 1) * lr_decay)`.
    pub lr_decay: f64,
    /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
    pub weight_decay: f64,
    /// Value `sum` starts at.
    pub initial_accumulator_value: f64,
    /// Term added to the denominator for numerical stability.
    pub eps: f64,
    /// Maximize the objective instead of minimizing it (the gradient is negated).
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// Per-step values of `adagrad.wgsl`'s `Scalars`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AdagradScalars {
    /// lr / (1 + (t - 1) * lr_decay)
    pub clr: f32,
    /// Term added to the denominator for numerical stability.
    pub eps: f32,
}

impl UpdateRule for Adagrad {
    type Scalars = AdagradScalars;
    const SHADER: &'static str = include_str!("adagrad.wgsl");
    const STATE_SLOTS: &'static [&'static str] = &["sum"];
    const NON_NEGATIVE: &'static [&'static str] = &["sum"];
    const COUNTS_STEPS: bool = true;
    const CHECKPOINT_NAME: &'static str = "Adagrad";

    fn name(&self) -> &'static str {
        "adagrad"
    }

    fn validate(&self) -> Result<()> {
        non_negative("lr", self.lr)?;
        non_negative("lr_decay", self.lr_decay)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("initial_accumulator_value", self.initial_accumulator_value)?;
        positive("eps", self.eps)
    }

    hyperparameters!(lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize);

    fn keeps_state(&self, name: &str) -> bool {
        name == "sum"
    }

    fn initial_state(&self, _name: &str) -> f32 {
        self.initial_accumulator_value as f32
    }

    fn l2_weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    fn scalars(&self, t: u64, _host: &[f64]) -> AdagradScalars {
        AdagradScalars {
            clr: (self.lr / (1.0 + (t - 1) as f64 * self.lr_decay)) as f32,
            eps: self.eps as f32,
        }
    }

    fn twin_update(&self, s: &AdagradScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let acc = state[0] + g * g;
        state[0] = acc;
        p - s.clr * (g / (acc.sqrt() + s.eps))
    }

    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, self.weight_decay as f32);
        let (sum, scratch, denom) = (Operand::State(0), Operand::Temp(1), Operand::Temp(2));
        program.square(scratch, g);
        program.add(sum, scratch);
        program.sqrt(denom, sum);
        program.add_scalar(denom, s.eps);
        program.copy(scratch, g);
        program.div(scratch, denom);
        program.mul_scalar(scratch, -s.clr);
        program.add(Operand::Param, scratch);
    }
}

impl RegisteredRule for Adagrad {
    const KEY: &'static str = "adagrad";

    fn variants() -> Vec<Self> {
        vec![Adagrad::default()]
    }

    fn every_flag() -> Vec<Self> {
        [false, true]
            .into_iter()
            .map(|maximize| Adagrad {
                lr: 0.1,
                lr_decay: 0.1,
                weight_decay: 0.3,
                initial_accumulator_value: 0.5,
                eps: 1e-2,
                maximize,
            })
            .collect()
    }
}
