//! Hyperparameter validation as PyTorch does it: each check names the field and says what a
//! valid value is, in an [`Error::InvalidConfig`].

use crate::error::{Error, Result};

fn check(ok: bool, field: &'static str, value: f64, reason: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            value,
            reason,
        })
    }
}

/// `value >= 0` and finite, as PyTorch requires of lr, weight_decay, momentum, ...
pub fn non_negative(field: &'static str, value: f64) -> Result<()> {
    check(
        value.is_finite() && value >= 0.0,
        field,
        value,
        "must be a finite number >= 0",
    )
}

/// `value > 0` and finite: an epsilon of 0 divides by zero wherever a gradient is zero.
pub fn positive(field: &'static str, value: f64) -> Result<()> {
    check(
        value.is_finite() && value > 0.0,
        field,
        value,
        "must be a finite number > 0",
    )
}

/// `0 <= value < 1`, as PyTorch requires of Adam's betas.
pub fn unit_interval(field: &'static str, value: f64) -> Result<()> {
    check(
        (0.0..1.0).contains(&value),
        field,
        value,
        "must lie in [0, 1)",
    )
}

/// A condition between fields, e.g. nesterov needing momentum.
pub fn require(ok: bool, field: &'static str, value: f64, reason: &'static str) -> Result<()> {
    check(ok, field, value, reason)
}
