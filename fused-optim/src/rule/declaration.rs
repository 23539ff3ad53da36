//! A rule's declaration, written once in its file with [`declare_rule!`]: the configuration
//! struct with PyTorch's names, defaults and valid ranges, the torch class it is, its state
//! slots (sign, the flag that keeps them), its host state and whether it counts steps. From it
//! come the struct and its `Default`, [`Declared`] (which [`UpdateRule`](crate::UpdateRule)'s
//! `validate`, `hyperparameters`, `set_hyperparameter` and `keeps_state` read), and the rule's
//! entry in the schema other tools read (`fused_optim::tooling::rule_schema`).

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::rule::check;
use crate::rule::Hyperparameter;

/// The values a hyperparameter may take, checked as PyTorch's constructors check them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Any value of its kind (flags).
    Any,
    /// Any finite number.
    Finite,
    /// A finite number `>= 0` (lr, weight_decay, momentum, ...).
    NonNegative,
    /// A finite number `> 0` (eps).
    Positive,
    /// `0 <= x < 1` (Adam's betas).
    UnitInterval,
    /// `0 <= x <= 1` (Adadelta's rho).
    ClosedUnitInterval,
}

impl Range {
    /// Checks one number, naming `field` in the error.
    pub fn check(self, field: &'static str, value: f64) -> Result<()> {
        match self {
            Range::Any => Ok(()),
            Range::Finite => check::require(value.is_finite(), field, value, "must be finite"),
            Range::NonNegative => check::non_negative(field, value),
            Range::Positive => check::positive(field, value),
            Range::UnitInterval => check::unit_interval(field, value),
            Range::ClosedUnitInterval => check::require(
                (0.0..=1.0).contains(&value),
                field,
                value,
                "must lie in [0, 1]",
            ),
        }
    }

    /// The range as the schema writes it, in interval notation.
    pub fn interval(self) -> &'static str {
        match self {
            Range::Any => "any",
            Range::Finite => "(-inf, inf)",
            Range::NonNegative => "[0, inf)",
            Range::Positive => "(0, inf)",
            Range::UnitInterval => "[0, 1)",
            Range::ClosedUnitInterval => "[0, 1]",
        }
    }
}

/// One hyperparameter of a rule `R`, as its declaration gives it.
pub struct Field<R> {
    /// PyTorch's name, which is the struct field's.
    pub name: &'static str,
    /// The valid values (each number of a pair is checked).
    pub range: Range,
    /// The names errors give a pair's numbers (`betas.0`, `betas.1`).
    pub components: [&'static str; 2],
    /// Whether the value is fixed by the class (AdamW's `decoupled_weight_decay`): setting
    /// another one is refused.
    pub fixed: bool,
    /// Reads the value.
    pub get: fn(&R) -> Hyperparameter,
    /// Stores a value of the field's kind (not validated), or refuses another kind.
    pub set: fn(&mut R, Hyperparameter) -> Result<()>,
}

impl<R> Field<R> {
    /// Checks the field's value in `rule` against its range.
    pub fn validate(&self, rule: &R) -> Result<()> {
        match (self.get)(rule) {
            Hyperparameter::Float(value) => self.range.check(self.name, value),
            Hyperparameter::Pair(first, second) => {
                self.range.check(self.components[0], first)?;
                self.range.check(self.components[1], second)
            }
            Hyperparameter::Bool(_) => Ok(()),
        }
    }
}

/// A per-step scalars struct's fields, in order, as its declaration names them: what the host
/// declares the shader's `struct Scalars` from, and the schema lists.
pub trait ScalarFields: Pod + std::fmt::Debug {
    /// Each field's name and type (`f32` or `u32`, the same name in Rust and WGSL), in memory
    /// order.
    const FIELDS: &'static [(&'static str, &'static str)];
}

/// What a rule's declaration (`declare_rule!` in its file) states: the data every layer reads about a
/// rule without running it.
pub trait Declared: Sized + 'static {
    /// Per-step values, from whose declaration the host declares the shader's `Scalars`.
    type Scalars: ScalarFields;

    /// The rule's name in checkpoints (`fused_optim.rule`), which a restore must match:
    /// PyTorch's class name where it has one (`Adam` for Adam and AdamW, `SGD`, `RMSprop`).
    const CHECKPOINT_NAME: &'static str;

    /// The `torch.optim` class this configuration is, if any (`AdamW`; Lion has none).
    const TORCH_CLASS: Option<&'static str>;

    /// Every hyperparameter, by PyTorch name, in declaration order.
    const HYPERPARAMETERS: &'static [Field<Self>];

    /// Hyperparameters of fused-optim's own that the torch class lacks: PyTorch's behaviour is
    /// their default (RMSprop's `eps_inside_sqrt`).
    const NOT_IN_TORCH: &'static [&'static str];

    /// Every per-element state the shader loads and stores (`load_<name>`, `store_<name>`),
    /// by PyTorch name. The twin's `state[i]` is slot `i`; the host generates each slot's
    /// binding and accessors in the slot's storage format (src/gpu/glue.rs).
    const STATE_SLOTS: &'static [&'static str];

    /// The slots of [`Declared::STATE_SLOTS`] that are never negative (`exp_avg_sq`, `sum`,
    /// ...): compact formats store them with unsigned codes. Every other slot is signed.
    const NON_NEGATIVE: &'static [&'static str];

    /// The slots kept only with a hyperparameter on (a flag true, a number above 0), with its
    /// name: `("max_exp_avg_sq", "amsgrad")`. The other slots are always kept.
    const KEPT_WITH: &'static [(&'static str, &'static str)];

    /// Values PyTorch keeps in this optimizer's state that change every step and are the same
    /// for every element, kept on the host like `step` (NAdam's `mu_product`), by name.
    const HOST_STATE: &'static [&'static str];

    /// Whether PyTorch keeps a `step` count in this optimizer's state.
    const COUNTS_STEPS: bool;
}

/// The field of `R` named `name`.
pub(crate) fn field<R: Declared>(name: &str) -> Option<&'static Field<R>> {
    R::HYPERPARAMETERS.iter().find(|field| field.name == name)
}

/// Whether a hyperparameter's value turns something on: a flag set, a number above 0.
pub(crate) fn is_on(value: Hyperparameter) -> bool {
    match value {
        Hyperparameter::Bool(on) => on,
        Hyperparameter::Float(x) => x > 0.0,
        Hyperparameter::Pair(..) => true,
    }
}

/// A value as the `f64` an [`Error::InvalidConfig`] reports (a flag as 0 or 1).
fn reported(value: Hyperparameter) -> f64 {
    match value {
        Hyperparameter::Float(x) | Hyperparameter::Pair(x, _) => x,
        Hyperparameter::Bool(on) => on as u8 as f64,
    }
}

/// The `set` of a fixed field: accepts only the class's value.
pub(crate) fn set_fixed(
    name: &'static str,
    fixed: Hyperparameter,
    value: Hyperparameter,
    reason: &'static str,
) -> Result<()> {
    if value == fixed {
        Ok(())
    } else if std::mem::discriminant(&value) == std::mem::discriminant(&fixed) {
        Err(Error::InvalidConfig {
            field: name,
            value: reported(value),
            reason,
        })
    } else {
        Err(Error::HyperparameterKind {
            name: name.to_owned(),
            expected: fixed.kind(),
            got: value.kind(),
        })
    }
}

/// Declares a rule's configuration: its struct (with `Default`) and its [`Declared`]
/// implementation, from one list. Hyperparameters are written
/// `name: type = default, Range;` (the range is left out for flags) with their doc comments;
/// state slots `name`, `name: non_negative`, `name: non_negative if flag`. A rule that is
/// another's under a torch class's name (AdamW) gives `same_rule_as: Other` in place of the
/// checkpoint name, slots, host state and step count, and `fixed` values the class always has.
macro_rules! declare_rule {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident : $ty:ty = $default:expr $(, $range:ident)?;
            )*
        }
        torch_class: $torch_class:expr,
        $(not_in_torch: [$($own:ident),* $(,)?],)?
        $(fixed: [$($fixed:ident = $fixed_value:expr => $fixed_reason:expr),* $(,)?],)?
        scalars: $scalars:ty,
        $($rule:tt)*
    ) => {
        $(#[$struct_meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default),* }
            }
        }

        impl $crate::rule::declaration::Declared for $name {
            type Scalars = $scalars;
            const TORCH_CLASS: Option<&'static str> = $torch_class;
            const HYPERPARAMETERS: &'static [$crate::rule::declaration::Field<Self>] = &[
                $(
                    $crate::rule::declaration::Field {
                        name: stringify!($field),
                        range: declare_rule!(@range $($range)?),
                        components: [concat!(stringify!($field), ".0"), concat!(stringify!($field), ".1")],
                        fixed: false,
                        get: |rule: &Self| rule.$field.into(),
                        set: |rule: &mut Self, value| {
                            $crate::rule::hyperparameter::assign(&mut rule.$field, stringify!($field), value)
                        },
                    },
                )*
                $($(
                    $crate::rule::declaration::Field {
                        name: stringify!($fixed),
                        range: $crate::rule::declaration::Range::Any,
                        components: [stringify!($fixed), stringify!($fixed)],
                        fixed: true,
                        get: |_: &Self| $fixed_value.into(),
                        set: |_: &mut Self, value| {
                            $crate::rule::declaration::set_fixed(
                                stringify!($fixed), $fixed_value.into(), value, $fixed_reason,
                            )
                        },
                    },
                )*)?
            ];
            const NOT_IN_TORCH: &'static [&'static str] = &[$($(stringify!($own)),*)?];
            declare_rule!(@rule $($rule)*);
        }
    };
    (@range) => { $crate::rule::declaration::Range::Any };
    (@range $range:ident) => { $crate::rule::declaration::Range::$range };
    (@rule same_rule_as: $other:ty $(,)?) => {
        const CHECKPOINT_NAME: &'static str = <$other as $crate::rule::declaration::Declared>::CHECKPOINT_NAME;
        const STATE_SLOTS: &'static [&'static str] = <$other as $crate::rule::declaration::Declared>::STATE_SLOTS;
        const NON_NEGATIVE: &'static [&'static str] = <$other as $crate::rule::declaration::Declared>::NON_NEGATIVE;
        const KEPT_WITH: &'static [(&'static str, &'static str)] = <$other as $crate::rule::declaration::Declared>::KEPT_WITH;
        const HOST_STATE: &'static [&'static str] = <$other as $crate::rule::declaration::Declared>::HOST_STATE;
        const COUNTS_STEPS: bool = <$other as $crate::rule::declaration::Declared>::COUNTS_STEPS;
    };
    (
        @rule
        checkpoint_name: $checkpoint:literal,
        state: [$($slot:ident $(: $sign:ident)? $(if $flag:ident)?),* $(,)?],
        $(host_state: [$($host:ident),* $(,)?],)?
        counts_steps: $counts:literal $(,)?
    ) => {
        const CHECKPOINT_NAME: &'static str = $checkpoint;
        const STATE_SLOTS: &'static [&'static str] = &[$(stringify!($slot)),*];
        const NON_NEGATIVE: &'static [&'static str] =
            &[$($(declare_rule!(@sign $sign $slot),)?)*];
        const KEPT_WITH: &'static [(&'static str, &'static str)] =
            &[$($((stringify!($slot), stringify!($flag)),)?)*];
        const HOST_STATE: &'static [&'static str] = &[$($(stringify!($host)),*)?];
        const COUNTS_STEPS: bool = $counts;
    };
    (@sign non_negative $slot:ident) => { stringify!($slot) };
}
pub(crate) use declare_rule;

/// Declares a per-step scalars struct (`#[repr(C)]`, `Pod`, fields of `f32` or `u32`) and its
/// [`ScalarFields`], from which the host declares the shader's `struct Scalars`.
macro_rules! declare_scalars {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$struct_meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $crate::rule::declaration::ScalarFields for $name {
            const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty))),*];
        }
    };
}
pub(crate) use declare_scalars;

/// Checks every hyperparameter of `rule` against its declared range.
pub(crate) fn validate_ranges<R: Declared>(rule: &R) -> Result<()> {
    R::HYPERPARAMETERS
        .iter()
        .try_for_each(|field| field.validate(rule))
}

/// Every hyperparameter of `rule` by name, in declaration order.
pub(crate) fn hyperparameters<R: Declared>(rule: &R) -> Vec<(&'static str, Hyperparameter)> {
    R::HYPERPARAMETERS
        .iter()
        .map(|field| (field.name, (field.get)(rule)))
        .collect()
}

/// Whether `rule`'s configuration keeps the slot `name`.
pub(crate) fn keeps_state<R: Declared>(rule: &R, name: &str) -> bool {
    R::STATE_SLOTS.contains(&name)
        && R::KEPT_WITH
            .iter()
            .filter(|(slot, _)| *slot == name)
            .all(|(_, flag)| field::<R>(flag).is_some_and(|field| is_on((field.get)(rule))))
}
