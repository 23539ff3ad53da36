//! What an update rule is: its hyperparameters, its per-step scalars, its WGSL, its CPU twin
//! and the unfused program the baseline interprets. Plain data and f32 math: this layer knows
//! no GPU (no wgpu), no buffers and no particular rule.

pub mod check;
pub mod declaration;
pub mod hyperparameter;
pub mod program;
mod schedule;
pub(crate) mod schema;

use crate::error::{Error, Result};
pub use declaration::Declared;
pub(crate) use declaration::{declare_rule, declare_scalars};
pub use hyperparameter::Hyperparameter;
pub use schedule::LrSchedule;

/// One optimizer's update rule: its PyTorch hyperparameters, the WGSL kernel that applies them,
/// and the CPU twin that performs the same f32 operations in the same order.
pub trait UpdateRule: Declared + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The rule's WGSL, without the prelude (`src/gpu/prelude.wgsl`).
    const SHADER: &'static str;

    /// Short name for reports and labels (`adam`, `adamw`, ...): the configuration's variant.
    fn name(&self) -> &'static str;

    /// Rejects hyperparameters PyTorch rejects, naming the field: each against its declared
    /// range, then [`UpdateRule::validate_combination`].
    fn validate(&self) -> Result<()> {
        declaration::validate_ranges(self)?;
        self.validate_combination()
    }

    /// Conditions between hyperparameters that no single range states (SGD's nesterov needs
    /// momentum); none by default.
    fn validate_combination(&self) -> Result<()> {
        Ok(())
    }

    /// Every hyperparameter by PyTorch name, in declaration order.
    fn hyperparameters(&self) -> Vec<(&'static str, Hyperparameter)> {
        declaration::hyperparameters(self)
    }

    /// Sets one hyperparameter by PyTorch name, without validating the result (see
    /// [`UpdateRule::validate`]); an unknown name or a value of the wrong kind is an error.
    fn set_hyperparameter(&mut self, name: &str, value: Hyperparameter) -> Result<()> {
        if let Some(outcome) = hyperparameter::implementation_choice(name, value) {
            return outcome;
        }
        match declaration::field::<Self>(name) {
            Some(field) => (field.set)(self, value),
            None => Err(Error::UnknownHyperparameter {
                name: name.to_owned(),
                rule: self.name(),
                available: Self::HYPERPARAMETERS
                    .iter()
                    .map(|field| field.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The rule one entry of a PyTorch optimizer's `state_dict()["param_groups"]` describes,
    /// as JSON (`json.dumps(optimizer.state_dict()["param_groups"][g])`): PyTorch's defaults,
    /// then every hyperparameter by name (numbers, flags, `betas` as a list of two), then
    /// validated. `foreach`, `fused`, `capturable` and `differentiable` choose how PyTorch
    /// runs a step, not what it computes, and are accepted as flags or `null` and ignored, as
    /// are `params` (see [`ParamGroup::from_param_group`](crate::ParamGroup::from_param_group))
    /// and a scheduler's `initial_lr`. An unknown name, a value of the wrong kind or an
    /// invalid value is an error naming it.
    fn from_param_group(group: &serde_json::Value) -> Result<Self>
    where
        Self: Default,
    {
        hyperparameter::from_param_group(group)
    }

    /// The learning rate (0 for a rule without one).
    fn lr(&self) -> f64 {
        match declaration::field::<Self>("lr").map(|field| (field.get)(self)) {
            Some(Hyperparameter::Float(lr)) => lr,
            _ => 0.0,
        }
    }

    /// Whether this configuration keeps the state slot `name` (e.g. `max_exp_avg_sq` only
    /// with amsgrad), as [`Declared::KEPT_WITH`] says.
    fn keeps_state(&self, name: &str) -> bool {
        declaration::keeps_state(self, name)
    }

    /// The value a state buffer starts at (zero except Adagrad's `initial_accumulator_value`).
    fn initial_state(&self, _name: &str) -> f32 {
        0.0
    }

    /// PyTorch's `maximize`: the prelude negates the gradient (the `MAXIMIZE` override).
    fn maximize(&self) -> bool {
        declaration::field::<Self>("maximize")
            .is_some_and(|field| (field.get)(self) == Hyperparameter::Bool(true))
    }

    /// The coefficient of the L2 term `weight_decay * p` the prelude adds to the gradient
    /// (0 where weight decay is decoupled, as in AdamW, or the rule has none).
    fn l2_weight_decay(&self) -> f64;

    /// The rule's own pipeline-overridable flags (`AMSGRAD`, `NESTEROV`, ...); `MAXIMIZE` and
    /// `WEIGHT_DECAY` are the prelude's and come from [`UpdateRule::maximize`] and
    /// [`UpdateRule::l2_weight_decay`].
    fn flags(&self) -> Vec<(&'static str, bool)>;

    /// The values of [`Declared::HOST_STATE`] before the first step.
    fn initial_host_state(&self) -> Vec<f64> {
        Vec::new()
    }

    /// Advances the host state from step `t - 1` to step `t`: called once per step, before
    /// that step's scalars, by the GPU optimizers and the twin alike.
    fn advance_host_state(&self, _t: u64, _host: &mut [f64]) {}

    /// The per-step values for step `t` (1-based), from the host state as advanced to step
    /// `t`, computed in f64 and rounded once to f32.
    fn scalars(&self, t: u64, host: &[f64]) -> Self::Scalars;

    /// The CPU twin of the shader's `update`: the new parameter from parameter `p` and
    /// gradient `g`, which arrives negated when maximizing and with the L2 term added, as the
    /// prelude passes it. `state` holds this element's value of every slot in `STATE_SLOTS`
    /// (slots this configuration does not keep hold 0 and are ignored).
    fn twin_update(&self, s: &Self::Scalars, p: f32, g: f32, state: &mut [f32]) -> f32;
}

/// An optimizer of the registry (`src/rules/mod.rs`): what the tests, the benchmark and the
/// example need to iterate every rule without naming one.
pub trait RegisteredRule: UpdateRule + program::Unfused + Default {
    /// The rule's name in the registry and in tests/data/pytorch_reference.json (`adam` covers
    /// Adam and AdamW, told apart by `decoupled_weight_decay`, as in PyTorch).
    const KEY: &'static str;

    /// The configurations the benchmark and the example offer, each named by
    /// [`UpdateRule::name`]: PyTorch's defaults, then the variants that change what a step
    /// moves or computes (momentum, amsgrad, ...). Names are unique across the registry.
    fn variants() -> Vec<Self>;

    /// Every combination of the rule's flags and kernel-changing options, with hyperparameters
    /// bolder than the defaults (lr 0.1, weight decay 0.3, eps 1e-2, ...) so that every term
    /// moves a result far past the tests' tolerance: what the twin tests run.
    fn every_flag() -> Vec<Self>;
}

/// The CPU twin of the prelude's `main` for one element: negate when maximizing, add the L2
/// term `l2 * p` where there is one (as PyTorch, only for a non-zero weight decay), hand the
/// result to the rule's `update`.
pub(crate) fn twin_element<R: UpdateRule>(
    rule: &R,
    l2: f32,
    s: &R::Scalars,
    param: &mut f32,
    grad: f32,
    state: &mut [f32],
) {
    let p = *param;
    let mut g = if rule.maximize() { -grad } else { grad };
    if l2 != 0.0 {
        g += l2 * p;
    }
    *param = rule.twin_update(s, p, g, state);
}

/// Each of `slots` by name, with whether it is one of the `non_negative` ones.
pub(crate) fn slot_signs(
    slots: &[&'static str],
    non_negative: &[&'static str],
) -> Vec<(&'static str, bool)> {
    slots
        .iter()
        .map(|slot| (*slot, non_negative.contains(slot)))
        .collect()
}

/// How many per-element state buffers `rule`'s configuration keeps.
pub fn kept_states<R: UpdateRule>(rule: &R) -> usize {
    R::STATE_SLOTS
        .iter()
        .filter(|name| rule.keeps_state(name))
        .count()
}

/// Bytes one step over `len` elements must move with `state_buffers` state buffers: params
/// read and written, grads read, each state read and written. Shared by the optimizer's
/// bandwidth figures and the benchmark's roofline, which must move exactly as much.
pub fn bytes_per_step(len: u64, state_buffers: usize) -> u64 {
    len * 4 * (3 + 2 * state_buffers as u64)
}

/// Where a state name lives: a buffer slot of the rule, a value of its host state, or the
/// host-side step count.
pub(crate) enum StateRef {
    Slot(usize),
    Host(usize),
    Step,
}

/// Every slot of `R::STATE_SLOTS` that one of `groups` keeps, then `step` when the rule counts.
pub(crate) fn state_names<R: UpdateRule>(groups: &[R]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = R::STATE_SLOTS
        .iter()
        .copied()
        .filter(|name| groups.iter().any(|rule| rule.keeps_state(name)))
        .collect();
    names.extend(R::HOST_STATE);
    if R::COUNTS_STEPS {
        names.push("step");
    }
    names
}

/// Finds a state that `group` keeps, by PyTorch name.
pub(crate) fn find_state<R: UpdateRule>(group: &R, name: &str) -> Result<StateRef> {
    if R::COUNTS_STEPS && name == "step" {
        return Ok(StateRef::Step);
    }
    if let Some(index) = R::HOST_STATE.iter().position(|host| *host == name) {
        return Ok(StateRef::Host(index));
    }
    R::STATE_SLOTS
        .iter()
        .position(|slot| *slot == name && group.keeps_state(slot))
        .map(StateRef::Slot)
        .ok_or_else(|| Error::UnknownState {
            name: name.to_owned(),
            available: state_names(std::slice::from_ref(group)).join(", "),
        })
}

/// Sets the lr only if the rule accepts it, so a rejected value leaves the old one in force.
pub(crate) fn try_set_lr<R: UpdateRule>(rule: &mut R, lr: f64) -> Result<()> {
    let mut candidate = rule.clone();
    candidate.set_hyperparameter("lr", Hyperparameter::Float(lr))?;
    candidate.validate()?;
    *rule = candidate;
    Ok(())
}
