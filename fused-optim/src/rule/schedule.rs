//! Learning-rate schedules with `torch.optim.lr_scheduler` semantics, in closed form: the lr at
//! scheduler step `t` (0 before the first `scheduler.step()`) for a base lr. Applying one to an
//! optimizer is `set_lr`, which changes only the per-step uniform.
//!
//! | schedule | PyTorch | lr at step t |
//! |---|---|---|
//! | `Constant` | (no scheduler) | base |
//! | `Step { step_size, gamma }` | `StepLR` | base · gamma^⌊t / step_size⌋ |
//! | `Exponential { gamma }` | `ExponentialLR` | base · gamma^t |
//! | `Cosine { t_max, eta_min }` | `CosineAnnealingLR` | eta_min + (base − eta_min) · (1 + cos(π t / t_max)) / 2 |
//! | `Warmup { steps, start_factor, then }` | `SequentialLR([LinearLR(start_factor, 1, steps), then], [steps])` | base · (start_factor + (1 − start_factor) · t / steps) for t < steps, then `then` at t − steps |

use super::check::{non_negative, positive, require};
use crate::error::Result;

/// A learning-rate schedule: the lr at each scheduler step, as its PyTorch scheduler gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base lr at every step, as with no scheduler.
    Constant,
    /// PyTorch's `StepLR`: the lr times `gamma` every `step_size` steps.
    Step {
        /// `step_size`: steps between decays.
        step_size: u64,
        /// `gamma`: the factor of each decay.
        gamma: f64,
    },
    /// PyTorch's `ExponentialLR`: the lr times `gamma` every step.
    Exponential {
        /// `gamma`: the factor of each step.
        gamma: f64,
    },
    /// PyTorch's `CosineAnnealingLR`: a cosine from the base lr down to `eta_min` at step `t_max`.
    Cosine {
        /// `T_max`: steps from the base lr to `eta_min`.
        t_max: u64,
        /// `eta_min`: the lowest lr.
        eta_min: f64,
    },
    /// A linear warm-up from `start_factor · base` over `steps`, then `then` from its step 0.
    Warmup {
        /// `LinearLR`'s `total_iters`: steps of warm-up, and the milestone of `SequentialLR`.
        steps: u64,
        /// `LinearLR`'s `start_factor`: the fraction of the base lr at step 0, in (0, 1].
        start_factor: f64,
        /// The schedule after the warm-up, counted from its own step 0.
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    /// `self` preceded by a linear warm-up, as PyTorch's `SequentialLR` chains them.
    pub fn after_warmup(self, steps: u64, start_factor: f64) -> Self {
        LrSchedule::Warmup {
            steps,
            start_factor,
            then: Box::new(self),
        }
    }

    /// Rejects what PyTorch rejects (a zero step size or period, a warm-up factor outside
    /// (0, 1]), plus non-finite or negative values.
    pub fn validate(&self) -> Result<()> {
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { step_size, gamma } => {
                require(
                    *step_size > 0,
                    "step_size",
                    *step_size as f64,
                    "must be at least 1",
                )?;
                non_negative("gamma", *gamma)
            }
            LrSchedule::Exponential { gamma } => non_negative("gamma", *gamma),
            LrSchedule::Cosine { t_max, eta_min } => {
                require(*t_max > 0, "T_max", *t_max as f64, "must be at least 1")?;
                non_negative("eta_min", *eta_min)
            }
            LrSchedule::Warmup {
                steps,
                start_factor,
                then,
            } => {
                require(
                    *steps > 0,
                    "warmup steps",
                    *steps as f64,
                    "must be at least 1",
                )?;
                positive("start_factor", *start_factor)?;
                require(
                    *start_factor <= 1.0,
                    "start_factor",
                    *start_factor,
                    "must lie in (0, 1]",
                )?;
                then.validate()
            }
        }
    }

    /// The lr at scheduler step `t` for base lr `base`.
    pub fn lr(&self, base: f64, t: u64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => base * gamma.powi((t / step_size) as i32),
            LrSchedule::Exponential { gamma } => base * gamma.powi(t as i32),
            LrSchedule::Cosine { t_max, eta_min } => {
                let phase = std::f64::consts::PI * t as f64 / *t_max as f64;
                eta_min + (base - eta_min) * (1.0 + phase.cos()) / 2.0
            }
            LrSchedule::Warmup {
                steps,
                start_factor,
                then,
            } => match t < *steps {
                true => base * (start_factor + (1.0 - start_factor) * t as f64 / *steps as f64),
                false => then.lr(base, t - steps),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{got} != {want}"
        );
    }

    /// Values from PyTorch's closed forms (`_get_closed_form_lr`), worked by hand.
    #[test]
    fn schedules_match_pytorch_closed_forms() {
        let step = LrSchedule::Step {
            step_size: 30,
            gamma: 0.1,
        };
        for (t, want) in [
            (0, 0.05),
            (29, 0.05),
            (30, 0.005),
            (60, 0.0005),
            (89, 0.0005),
        ] {
            close(step.lr(0.05, t), want);
        }
        let exponential = LrSchedule::Exponential { gamma: 0.9 };
        for (t, want) in [(0, 1.0), (1, 0.9), (3, 0.729), (10, 0.348_678_440_1)] {
            close(exponential.lr(1.0, t), want);
        }
        let cosine = LrSchedule::Cosine {
            t_max: 10,
            eta_min: 0.001,
        };
        // eta_min + (base - eta_min) (1 + cos(pi t / 10)) / 2 with base 0.1
        for (t, want) in [
            (0, 0.1),
            (3, 0.001 + 0.099 * (1.0 + 0.587_785_252_292_473_1) / 2.0),
            (5, 0.0505),
            (10, 0.001),
            (15, 0.0505),
        ] {
            close(cosine.lr(0.1, t), want);
        }
        // LinearLR(start_factor=0.25, total_iters=4) then cosine, as SequentialLR runs them.
        let warm = cosine.clone().after_warmup(4, 0.25);
        for (t, want) in [
            (0, 0.025),
            (1, 0.04375),
            (3, 0.08125),
            (4, 0.1),
            (9, 0.0505),
        ] {
            close(warm.lr(0.1, t), want);
        }
        close(LrSchedule::Constant.lr(0.3, 1000), 0.3);
    }

    #[test]
    fn bad_schedules_are_refused() {
        for schedule in [
            LrSchedule::Step {
                step_size: 0,
                gamma: 0.1,
            },
            LrSchedule::Exponential { gamma: -1.0 },
            LrSchedule::Cosine {
                t_max: 0,
                eta_min: 0.0,
            },
            LrSchedule::Constant.after_warmup(0, 0.5),
            LrSchedule::Constant.after_warmup(5, 1.5),
            LrSchedule::Constant.after_warmup(5, 0.0),
        ] {
            assert!(schedule.validate().is_err(), "{schedule:?}");
        }
    }
}
