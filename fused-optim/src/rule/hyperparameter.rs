//! A rule's hyperparameters by their PyTorch names, as an entry of `param_groups` holds them:
//! what a scheduler, a checkpoint or a port from PyTorch reads and sets without knowing the
//! rule's type.

use crate::error::{Error, Result};
use crate::rule::UpdateRule;

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

/// `torch.optim`'s options that choose how a step runs (foreach or fused loops, CUDA-graph
/// capture, autograd through the step) and not what it computes. Every `param_groups` entry
/// holds them, so a rule accepts each as a flag (or, from JSON, `null`) and ignores it.
pub const IMPLEMENTATION_CHOICES: &[&str] = &["foreach", "fused", "capturable", "differentiable"];

/// `Some` for one of the [`IMPLEMENTATION_CHOICES`]: accepted as a flag, refused otherwise.
pub fn implementation_choice(name: &str, value: Hyperparameter) -> Option<Result<()>> {
    IMPLEMENTATION_CHOICES.contains(&name).then(|| match value {
        Hyperparameter::Bool(_) => Ok(()),
        other => Err(Error::HyperparameterKind {
            name: name.to_owned(),
            expected: "a flag",
            got: other.kind(),
        }),
    })
}

/// Keys of a PyTorch `param_groups` entry that are not hyperparameters: the group's
/// parameter indices, and the base lr an `LRScheduler` records.
const NOT_HYPERPARAMETERS: &[&str] = &["params", "initial_lr"];

/// The rule a PyTorch `param_groups` entry describes (see
/// [`UpdateRule::from_param_group`](crate::UpdateRule::from_param_group)).
pub(crate) fn from_param_group<R: UpdateRule + Default>(group: &serde_json::Value) -> Result<R> {
    use serde_json::Value;
    let entries = group.as_object().ok_or_else(|| Error::HyperparameterKind {
        name: "param_groups entry".to_owned(),
        expected: "an object of hyperparameters by name",
        got: json_kind(group),
    })?;
    let mut rule = R::default();
    for (name, value) in entries {
        if NOT_HYPERPARAMETERS.contains(&name.as_str()) {
            continue;
        }
        let value = match value {
            Value::Bool(on) => Hyperparameter::Bool(*on),
            Value::Number(x) => Hyperparameter::Float(x.as_f64().unwrap_or(f64::NAN)),
            Value::Array(pair) => match pair.as_slice() {
                [Value::Number(first), Value::Number(second)] => Hyperparameter::Pair(
                    first.as_f64().unwrap_or(f64::NAN),
                    second.as_f64().unwrap_or(f64::NAN),
                ),
                _ => return Err(kind_error(name, &rule, value)),
            },
            Value::Null if IMPLEMENTATION_CHOICES.contains(&name.as_str()) => continue,
            _ => return Err(kind_error(name, &rule, value)),
        };
        rule.set_hyperparameter(name, value)?;
    }
    rule.validate()?;
    Ok(rule)
}

/// The JSON value's kind, for error messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a flag",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list other than a pair of numbers",
        Value::Object(_) => "an object",
    }
}

/// The error for `value`, of no kind a hyperparameter takes, given for `name`: the kind the
/// rule's hyperparameter (or implementation choice) of that name takes, or that the rule
/// has none of that name.
fn kind_error<R: UpdateRule>(name: &str, rule: &R, value: &serde_json::Value) -> Error {
    let known = rule.hyperparameters();
    let expected = match known.iter().find(|(n, _)| *n == name) {
        Some((_, like)) => like.kind(),
        None if IMPLEMENTATION_CHOICES.contains(&name) => "a flag",
        None => {
            return Error::UnknownHyperparameter {
                name: name.to_owned(),
                rule: rule.name(),
                available: known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }
        }
    };
    Error::HyperparameterKind {
        name: name.to_owned(),
        expected,
        got: json_kind(value),
    }
}
