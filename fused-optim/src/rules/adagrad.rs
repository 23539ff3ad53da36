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

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of Adagrad, with PyTorch's names and defaults.
    pub struct Adagrad {
        /// Learning rate.
        lr: f64 = 1e-2, NonNegative;
        /// Learning-rate decay: step t uses `lr / (1 + (t - 1) * lr_decay)`.
        lr_decay: f64 = 0.0, NonNegative;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient, unless decoupled.
        weight_decay: f64 = 0.0, NonNegative;
        /// Value `sum` starts at.
        initial_accumulator_value: f64 = 0.0, NonNegative;
        /// Term added to the denominator for numerical stability.
        eps: f64 = 1e-10, Positive;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("Adagrad"),
    scalars: AdagradScalars,
    checkpoint_name: "Adagrad",
    state: [sum: non_negative],
    counts_steps: true,
}

declare_scalars! {
    /// Per-step values of `adagrad.wgsl`'s `Scalars`, field for field.
    pub struct AdagradScalars {
        /// lr / (1 + (t - 1) * lr_decay)
        clr: f32,
        /// Term added to the denominator for numerical stability.
        eps: f32,
    }
}

impl UpdateRule for Adagrad {
    const SHADER: &'static str = include_str!("adagrad.wgsl");

    fn name(&self) -> &'static str {
        "adagrad"
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
}

impl Unfused for Adagrad {
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
