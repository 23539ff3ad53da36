//! A rule's hyperparameters by their PyTorch names, as an entry of `param_groups` holds them:
//! what a scheduler, a checkpoint or a port from PyTorch reads and sets without knowing the
//! rule's type.

use crate::error::{Error, Result};

/// One hyperparameter's value: a number (`lr`, `eps`, ...), a flag (`amsgrad`, ...) or a pair
/// (`betas`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hyperparameter {
    /// A number such as `lr` or `weight_decay`.
    Float(f64),
    /// A flag such as `amsgrad` or `maximize`.
    Bool(bool),
    /// A pair such as `betas`.
    Pair(f64, f64),
}

impl Hyperparameter {
    /// The kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Hyperparameter::Float(_) => "a number",
            Hyperparameter::Bool(_) => "a flag",
            Hyperparameter::Pair(..) => "a pair of numbers",
        }
    }
}

impl From<f64> for Hyperparameter {
    fn from(value: f64) -> Self {
        Hyperparameter::Float(value)
    }
}

impl From<bool> for Hyperparameter {
    fn from(value: bool) -> Self {
        Hyperparameter::Bool(value)
    }
}

impl From<(f64, f64)> for Hyperparameter {
    fn from((first, second): (f64, f64)) -> Self {
        Hyperparameter::Pair(first, second)
    }
}

/// A field type a hyperparameter can be stored in.
pub trait HyperparameterField: Copy + Into<Hyperparameter> {
    /// The field's value from `value`, or `None` if it is of another kind.
    fn from_hyperparameter(value: Hyperparameter) -> Option<Self>;
}

impl HyperparameterField for f64 {
    fn from_hyperparameter(value: Hyperparameter) -> Option<Self> {
        match value {
            Hyperparameter::Float(value) => Some(value),
            _ => None,
        }
    }
}

impl HyperparameterField for bool {
    fn from_hyperparameter(value: Hyperparameter) -> Option<Self> {
        match value {
            Hyperparameter::Bool(value) => Some(value),
            _ => None,
        }
    }
}

impl HyperparameterField for (f64, f64) {
    fn from_hyperparameter(value: Hyperparameter) -> Option<Self> {
        match value {
            Hyperparameter::Pair(first, second) => Some((first, second)),
            _ => None,
        }
    }
}

/// Stores `value` in `field` if it is of the field's kind (no validation: the caller
/// validates the whole rule afterwards).
pub fn assign<T: HyperparameterField>(
    field: &mut T,
    name: &str,
    value: Hyperparameter,
) -> Result<()> {
    let expected = (*field).into().kind();
    *field = T::from_hyperparameter(value).ok_or_else(|| Error::HyperparameterKind {
        name: name.to_owned(),
        expected,
        got: value.kind(),
    })?;
    Ok(())
}

/// Implements [`UpdateRule::hyperparameters`](crate::UpdateRule::hyperparameters) and
/// [`UpdateRule::set_hyperparameter`](crate::UpdateRule::set_hyperparameter) inside an
/// `impl UpdateRule` block from the rule's field names, which are PyTorch's.
macro_rules! hyperparameters {
    ($($field:ident),* $(,)?) => {
        fn hyperparameters(&self) -> Vec<(&'static str, $crate::rule::Hyperparameter)> {
            vec![$((stringify!($field), self.$field.into())),*]
        }

        fn set_hyperparameter(
            &mut self,
            name: &str,
            value: $crate::rule::Hyperparameter,
        ) -> $crate::Result<()> {
            match name {
                $(stringify!($field) => {
                    $crate::rule::hyperparameter::assign(&mut self.$field, name, value)
                })*
                _ => Err($crate::Error::UnknownHyperparameter {
                    name: name.to_owned(),
                    rule: self.name(),
                    available: [$(stringify!($field)),*].join(", "),
                }),
            }
        }
    };
}
pub(crate) use hyperparameters;
