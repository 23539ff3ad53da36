//! What an update rule is: its hyperparameters, its per-step scalars, its WGSL, its CPU twin
//! and the unfused program the baseline interprets. Plain data and f32 math: this layer knows
//! no GPU (no wgpu), no buffers and no particular rule.

pub mod check;
pub mod hyperparameter;
pub mod program;
mod schedule;

use bytemuck::Pod;

use crate::error::{Error, Result};
pub(crate) use hyperparameter::hyperparameters;
pub use hyperparameter::Hyperparameter;
use program::Program;
pub use schedule::LrSchedule;

/// One optimizer's update rule: its PyTorch hyperparameters, the WGSL kernel that applies them,
/// and the CPU twin that performs the same f32 operations in the same order.
pub trait UpdateRule: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Per-step values, field for field the `Scalars` struct in the rule's shader.
    type Scalars: Pod + std::fmt::Debug;

    /// The rule's WGSL, without the prelude (`src/gpu/prelude.wgsl`).
    const SHADER: &'static str;

    /// Whether [`UpdateRule::SHADER`] is a whole kernel with its own `main`, bindings and
    /// `Step` (laid out as the prelude's) rather than a `fn update` the prelude calls. Only
    /// the unfused chain's elementwise kernel does this, so that an operation reads no operand
    /// it does not use; rules leave it false.
    const OWN_ENTRY_POINT: bool = false;

    /// Every per-element state the shader loads and stores (`load_<name>`, `store_<name>`),
    /// by PyTorch name. The twin's `state[i]` is slot `i`; the host generates each slot's
    /// binding and accessors in the slot's storage format (src/gpu/glue.rs).
    const STATE_SLOTS: &'static [&'static str];

    /// The slots of [`UpdateRule::STATE_SLOTS`] that are never negative (`exp_avg_sq`, `sum`,
    /// ...): 8-bit state stores them through the unsigned quantization map, which spends all
    /// 256 codes on values of one sign. Every other slot uses the signed map.
    const NON_NEGATIVE: &'static [&'static str] = &[];

    /// Whether PyTorch keeps a `step` count in this optimizer's state.
    const COUNTS_STEPS: bool;

    /// The rule's name in checkpoints (`fused_optim.rule`), which a restore must match:
    /// PyTorch's class name where it has one (`Adam` for Adam and AdamW, `SGD`, `RMSprop`).
    const CHECKPOINT_NAME: &'static str;

    /// Short name for reports and labels (`adam`, `adamw`, ...): the configuration's variant.
    fn name(&self) -> &'static str;

    /// Rejects hyperparameters PyTorch rejects, naming the field.
    fn validate(&self) -> Result<()>;

    /// Every hyperparameter by PyTorch name (write it with the `hyperparameters!` macro).
    fn hyperparameters(&self) -> Vec<(&'static str, Hyperparameter)>;

    /// Sets one hyperparameter by PyTorch name, without validating the result (see
    /// [`UpdateRule::validate`]); an unknown name or a value of the wrong kind is an error.
    fn set_hyperparameter(&mut self, name: &str, value: Hyperparameter) -> Result<()>;

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
        self.hyperparameters()
            .into_iter()
            .find_map(|(name, value)| match (name, value) {
                ("lr", Hyperparameter::Float(lr)) => Some(lr),
                _ => None,
            })
            .unwrap_or(0.0)
    }

    /// Whether this configuration keeps the state slot `name` (e.g. `max_exp_avg_sq` only with amsgrad).
    fn keeps_state(&self, name: &str) -> bool;

    /// The value a state buffer starts at (zero except Adagrad's `initial_accumulator_value`).
    fn initial_state(&self, _name: &str) -> f32 {
        0.0
    }

    /// PyTorch's `maximize`: the prelude negates the gradient (the `MAXIMIZE` override).
    fn maximize(&self) -> bool {
        self.hyperparameters()
            .contains(&("maximize", Hyperparameter::Bool(true)))
    }

    /// The coefficient of the L2 term `weight_decay * p` the prelude adds to the gradient
    /// (0 where weight decay is decoupled, as in AdamW, or the rule has none).
    fn l2_weight_decay(&self) -> f64;

    /// The rule's own pipeline-overridable flags (`AMSGRAD`, `NESTEROV`, ...); `MAXIMIZE` and
    /// `WEIGHT_DECAY` are the prelude's and come from [`UpdateRule::maximize`] and
    /// [`UpdateRule::l2_weight_decay`].
    fn flags(&self) -> Vec<(&'static str, bool)>;

    /// Integer pipeline-overridable constants besides the flags. The optimizers have none; the
    /// unfused chain's elementwise kernel picks its operation with one.
    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    /// Values PyTorch keeps in this optimizer's state that change every step and are the same
    /// for every element, kept on the host like `step` (NAdam's `mu_product`), by name.
    const HOST_STATE: &'static [&'static str] = &[];

    /// The values of [`UpdateRule::HOST_STATE`] before the first step.
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

    /// Step `t` as the unfused chain of elementwise operations a framework without fusion
    /// would run (the benchmark's baseline). Starts from [`Program::gradient`], the prelude's
    /// gradient, and uses the same scalars as the kernel (`host` as for
    /// [`UpdateRule::scalars`]).
    fn unfused(&self, t: u64, host: &[f64], program: &mut Program);
}

/// An optimizer of the registry (`src/rules/mod.rs`): what the tests, the benchmark and the
/// example need to iterate every rule without naming one.
pub trait RegisteredRule: UpdateRule + Default {
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

/// Every override the rule's pipeline is specialised on: its flags as 0 or 1, its integer
/// constants, and, for a rule appended to the prelude, the prelude's `MAXIMIZE` and
/// `WEIGHT_DECAY` (whether there is an L2 term).
pub(crate) fn pipeline_constants<R: UpdateRule>(rule: &R) -> Vec<(&'static str, u32)> {
    let mut constants: Vec<(&'static str, u32)> = rule
        .flags()
        .into_iter()
        .map(|(name, on)| (name, on as u32))
        .collect();
    constants.extend(rule.constants());
    if !R::OWN_ENTRY_POINT {
        constants.push(("MAXIMIZE", rule.maximize() as u32));
        constants.push(("WEIGHT_DECAY", (rule.l2_weight_decay() != 0.0) as u32));
    }
    constants
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

/// Each state slot of `R` by name, with whether it is never negative.
pub(crate) fn slot_signs<R: UpdateRule>() -> Vec<(&'static str, bool)> {
    R::STATE_SLOTS
        .iter()
        .map(|slot| (*slot, R::NON_NEGATIVE.contains(slot)))
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
