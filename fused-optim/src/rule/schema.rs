//! The rules' declarations as JSON, for tools outside Rust (the PyTorch converter,
//! `tools/torch_checkpoint.py`): what each checkpoint rule keeps, what each configuration
//! type, under its torch class's name, holds in a `param_groups` entry, and the checkpoint
//! file's metadata keys. Written by
//! [`rule_schema`](crate::tooling::rule_schema) from the registry; committed as
//! `fused-optim/rule-schema.json` and held to the registry by a test.

use serde_json::{json, Map, Value};

use crate::rule::declaration::ScalarFields;
use crate::rule::hyperparameter::IMPLEMENTATION_CHOICES;
use crate::rule::{Hyperparameter, UpdateRule};

/// Bumped when the schema's shape changes, so a reader can refuse a schema it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// A hyperparameter's kind as the schema names it: `number`, `flag` or `pair`.
fn kind(hyperparameter: Hyperparameter) -> &'static str {
    match hyperparameter {
        Hyperparameter::Float(_) => "number",
        Hyperparameter::Bool(_) => "flag",
        Hyperparameter::Pair(..) => "pair",
    }
}

/// A hyperparameter's value as JSON: a number, a flag, or a pair as a list of two.
fn value(hyperparameter: Hyperparameter) -> Value {
    match hyperparameter {
        Hyperparameter::Float(x) => json!(x),
        Hyperparameter::Bool(on) => json!(on),
        Hyperparameter::Pair(first, second) => json!([first, second]),
    }
}

/// What one checkpoint rule keeps: its registry key, state slots, host state, step count and
/// per-step scalars.
pub(crate) fn rule_entry<R: UpdateRule>(key: &str) -> Value {
    let kept_with: Map<String, Value> = R::KEPT_WITH
        .iter()
        .map(|(slot, flag)| (slot.to_string(), json!(flag)))
        .collect();
    json!({
        "key": key,
        "state_slots": R::STATE_SLOTS,
        "non_negative": R::NON_NEGATIVE,
        "kept_with": kept_with,
        "host_state": R::HOST_STATE,
        "counts_steps": R::COUNTS_STEPS,
        "scalars": <R::Scalars as ScalarFields>::FIELDS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>(),
        "scalars_bytes": std::mem::size_of::<R::Scalars>(),
    })
}

/// One configuration type as its torch class (`None` for a rule torch.optim lacks): its
/// rule, every hyperparameter PyTorch's class has with its default, kind and range, and the
/// values the class always has (fixed ones, and fused-optim's own at PyTorch's behaviour).
pub(crate) fn torch_class_entry<C: UpdateRule + Default>() -> Option<(&'static str, Value)> {
    let torch_class = C::TORCH_CLASS?;
    let defaults = C::default();
    let mut hyperparameters = Map::new();
    let mut always = Map::new();
    for field in C::HYPERPARAMETERS {
        let default = (field.get)(&defaults);
        if field.fixed || C::NOT_IN_TORCH.contains(&field.name) {
            always.insert(field.name.to_owned(), value(default));
        }
        if !C::NOT_IN_TORCH.contains(&field.name) {
            hyperparameters.insert(
                field.name.to_owned(),
                json!({
                    "default": value(default),
                    "kind": kind(default),
                    "range": field.range.interval(),
                }),
            );
        }
    }
    let type_name = std::any::type_name::<C>().rsplit("::").next();
    Some((
        torch_class,
        json!({
            "rule": C::CHECKPOINT_NAME,
            "type": type_name,
            "hyperparameters": hyperparameters,
            "always": always,
        }),
    ))
}

/// The checkpoint file's metadata keys a converter reads and writes (see
/// [`crate::checkpoint`]).
fn checkpoint_keys() -> Value {
    use crate::checkpoint::{
        BLOCK_KEY, FORMAT_VERSION, GROUP_PREFIX, PARAM_PREFIX, QMAP_PREFIX, VERSION_KEY,
    };
    json!({
        "format_version": FORMAT_VERSION,
        "version_key": VERSION_KEY,
        "param_prefix": PARAM_PREFIX,
        "group_prefix": GROUP_PREFIX,
        "qmap_prefix": QMAP_PREFIX,
        "block_key": BLOCK_KEY,
    })
}

/// The schema's top level from its parts.
pub(crate) fn document(rules: Map<String, Value>, torch_classes: Map<String, Value>) -> Value {
    json!({
        "schema_version": SCHEMA_VERSION,
        "checkpoint": checkpoint_keys(),
        "implementation_choices": IMPLEMENTATION_CHOICES,
        "rules": rules,
        "torch_classes": torch_classes,
    })
}
