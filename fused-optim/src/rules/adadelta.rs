//! Adadelta, as `torch.optim.Adadelta`.
//!
//! With gradient `g`, parameter `p` and state `square_avg` (`v`), `acc_delta` (`a`), each step
//! computes
//! ```text
//! g = -grad if maximize else grad
//! g = g + weight_decay * p
//! v = rho * v + (1 - rho) * g^2
//! delta = sqrt(a + eps) / sqrt(v + eps) * g
//! a = rho * a + (1 - rho) * delta^2
//! p = p - lr * delta
//! ```
//! Kernel: `adadelta.wgsl`, beside this file.

use crate::rule::program::{Operand, Program, Unfused};
use crate::rule::{declare_rule, declare_scalars, RegisteredRule, UpdateRule};

declare_rule! {
    /// Hyperparameters of Adadelta, with PyTorch's names and defaults.
    pub struct Adadelta {
        /// Learning rate: the scale of the delta applied.
        lr: f64 = 1.0, NonNegative;
        /// Coefficient of the running averages of the squared gradient and of the squared delta.
        rho: f64 = 0.9, ClosedUnitInterval;
        /// Term added inside both square roots for numerical stability.
        eps: f64 = 1e-6, Positive;
        /// Weight decay: an L2 term `weight_decay * p` added to the gradient.
        weight_decay: f64 = 0.0, NonNegative;
        /// Maximize the objective instead of minimizing it (the gradient is negated).
        maximize: bool = false;
    }
    torch_class: Some("Adadelta"),
    scalars: AdadeltaScalars,
    checkpoint_name: "Adadelta",
    state: [square_avg: non_negative, acc_delta: non_negative],
    counts_steps: true,
}

declare_scalars! {
    /// Per-step values of `adadelta.wgsl`'s `Scalars`, field for field.
    pub struct AdadeltaScalars {
        /// Learning rate.
        lr: f32,
        /// rho
        rho: f32,
        /// 1 - rho
        one_minus_rho: f32,
        /// Term added inside the square roots.
        eps: f32,
    }
}

impl UpdateRule for Adadelta {
    const SHADER: &'static str = include_str!("adadelta.wgsl");

    fn name(&self) -> &'static str {
        "adadelta"
    }

    fn l2_weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn flags(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }

    fn scalars(&self, _t: u64, _host: &[f64]) -> AdadeltaScalars {
        AdadeltaScalars {
            lr: self.lr as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
        }
    }

    fn twin_update(&self, s: &AdadeltaScalars, p: f32, g: f32, state: &mut [f32]) -> f32 {
        let v = s.rho * state[0] + s.one_minus_rho * (g * g);
        let std = (v + s.eps).sqrt();
        let delta = (state[1] + s.eps).sqrt() / std * g;
        state[0] = v;
        state[1] = s.rho * state[1] + s.one_minus_rho * (delta * delta);
        p - s.lr * delta
    }
}

impl Unfused for Adadelta {
    fn unfused(&self, t: u64, host: &[f64], program: &mut Program) {
        let s = self.scalars(t, host);
        let g = program.gradient(self.maximize, self.weight_decay as f32);
        let (v, acc) = (Operand::State(0), Operand::State(1));
        let (delta, scratch) = (Operand::Temp(1), Operand::Temp(2));
        program.mul_scalar(v, s.rho);
        program.square(scratch, g);
        program.mul_scalar(scratch, s.one_minus_rho);
        program.add(v, scratch);
        let std = scratch;
        program.copy(std, v);
        program.add_scalar(std, s.eps);
        program.sqrt_in_place(std);
        program.copy(delta, acc);
        program.add_scalar(delta, s.eps);
        program.sqrt_in_place(delta);
        program.div(delta, std);
        program.mul(delta, g);
        program.mul_scalar(acc, s.rho);
        program.square(scratch, delta);
        program.mul_scalar(scratch, s.one_minus_rho);
        program.add(acc, scratch);
        program.scale(scratch, delta, -s.lr);
        program.add(Operand::Param, scratch);
    }
}

impl RegisteredRule for Adadelta {
    const KEY: &'static str = "adadelta";

    fn variants() -> Vec<Self> {
        vec![Adadelta::default()]
    }

    fn every_flag() -> Vec<Self> {
        [false, true]
            .into_iter()
            .map(|maximize| Adadelta {
                lr: 0.1,
                rho: 0.9,
                eps: 1e-2,
                weight_decay: 0.3,
                maximize,
            })
            .collect()
    }
}
