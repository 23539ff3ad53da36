//! What the engine dispatches: a WGSL update over per-element state slots with per-step
//! scalars. Every [`UpdateRule`] is one (the impl below); the benchmark's unfused chain runs
//! its elementwise operations as others, which are kernels and not rules: they bring their own
//! entry point and pick their operation with an integer override.

use crate::error::Result;
use crate::rule::declaration::ScalarFields;
use crate::rule::{Declared, UpdateRule};

/// A kernel the engine builds, binds and records: its WGSL, state slots, overrides and
/// per-step values. Its items mean what [`UpdateRule`]'s and [`Declared`]'s of the same names
/// mean for a rule.
pub trait StepKernel: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Per-dispatch values, from which the host declares the shader's `struct Scalars`.
    type Scalars: ScalarFields;

    /// The WGSL: a rule's `fn update` the prelude calls, or a whole kernel.
    const SHADER: &'static str;

    /// Whether [`StepKernel::SHADER`] is a whole kernel with its own `main`, bindings and
    /// `Step` (laid out as the prelude's), so that it loads only the operands it uses; it then
    /// runs in f32, without a grad guard.
    const OWN_ENTRY_POINT: bool;

    /// The per-element state buffers, by name, in binding order.
    const STATE_SLOTS: &'static [&'static str];

    /// The slots that are never negative (compact formats store them with unsigned codes).
    const NON_NEGATIVE: &'static [&'static str];

    /// A short name for labels and errors.
    fn name(&self) -> &'static str;

    /// Refuses a configuration the kernel cannot run.
    fn validate(&self) -> Result<()>;

    /// Whether this configuration keeps the slot `name`.
    fn keeps_state(&self, name: &str) -> bool;

    /// The value a state buffer starts at.
    fn initial_state(&self, name: &str) -> f32;

    /// Every override the pipeline is specialised on (flags as 0 or 1, integer constants).
    fn pipeline_constants(&self) -> Vec<(&'static str, u32)>;

    /// The L2 coefficient the step's header carries (0 for none).
    fn l2_weight_decay(&self) -> f64;

    /// The per-step host state before the first step.
    fn initial_host_state(&self) -> Vec<f64>;

    /// Advances the host state to step `t`.
    fn advance_host_state(&self, t: u64, host: &mut [f64]);

    /// The per-dispatch values of step `t`.
    fn scalars(&self, t: u64, host: &[f64]) -> Self::Scalars;
}

impl<R: UpdateRule> StepKernel for R {
    type Scalars = <R as Declared>::Scalars;
    const SHADER: &'static str = <R as UpdateRule>::SHADER;
    const OWN_ENTRY_POINT: bool = false;
    const STATE_SLOTS: &'static [&'static str] = <R as Declared>::STATE_SLOTS;
    const NON_NEGATIVE: &'static [&'static str] = <R as Declared>::NON_NEGATIVE;

    fn name(&self) -> &'static str {
        UpdateRule::name(self)
    }

    fn validate(&self) -> Result<()> {
        UpdateRule::validate(self)
    }

    fn keeps_state(&self, name: &str) -> bool {
        UpdateRule::keeps_state(self, name)
    }

    fn initial_state(&self, name: &str) -> f32 {
        UpdateRule::initial_state(self, name)
    }

    /// The rule's flags as 0 or 1, then the prelude's `MAXIMIZE` and `WEIGHT_DECAY` (whether
    /// there is an L2 term).
    fn pipeline_constants(&self) -> Vec<(&'static str, u32)> {
        let mut constants: Vec<(&'static str, u32)> = UpdateRule::flags(self)
            .into_iter()
            .map(|(name, on)| (name, on as u32))
            .collect();
        constants.push(("MAXIMIZE", UpdateRule::maximize(self) as u32));
        constants.push((
            "WEIGHT_DECAY",
            (UpdateRule::l2_weight_decay(self) != 0.0) as u32,
        ));
        constants
    }

    fn l2_weight_decay(&self) -> f64 {
        UpdateRule::l2_weight_decay(self)
    }

    fn initial_host_state(&self) -> Vec<f64> {
        UpdateRule::initial_host_state(self)
    }

    fn advance_host_state(&self, t: u64, host: &mut [f64]) {
        UpdateRule::advance_host_state(self, t, host)
    }

    fn scalars(&self, t: u64, host: &[f64]) -> Self::Scalars {
        UpdateRule::scalars(self, t, host)
    }
}
