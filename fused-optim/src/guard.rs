//! What a step does to the grads before the rule sees them, as `torch.amp.GradScaler`,
//! `clip_grad_value_` and `clip_grad_norm_` do: unscale by the loss scale, clamp each
//! element, scale by the global-norm clipping coefficient, and skip the whole step when any
//! grad is inf or NaN. The settings, the status the device keeps, and the CPU twin of the
//! device's reduction and update (`src/gpu/guard.wgsl`), in f32 and in the same order. Plain
//! data and f32 math: no GPU.
//!
//! A step with a guard, on the device and in the twin alike:
//! 1. every grad `g` of every tensor becomes `u = clamp(g * (1 / scale), -clip_value,
//!    clip_value)` (without a scaler the scale is 1, without value clipping the bound is inf);
//! 2. one reduction over every `u`: whether any is inf or NaN, and the total norm (2 or inf)
//!    of the finite ones, in partial sums of 4096 elements per workgroup combined in a fixed
//!    order, so that the same grads give bitwise the same norm on every run;
//! 3. with a scaler and an inf or NaN: nothing is updated, the step count stays, the scale
//!    backs off and the growth tracker resets. Otherwise the rule updates every element from
//!    `u * coef`, `coef = min(max_norm / (total_norm + 1e-6), 1)` (1 without norm clipping),
//!    and the scale grows after `growth_interval` clean steps in a row.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// `torch.amp.GradScaler`'s settings, with its defaults: the loss scale starts at
/// `init_scale`, is multiplied by `backoff_factor` after a step with an inf or NaN grad
/// (which is skipped), and by `growth_factor` after `growth_interval` clean steps in a row.
/// Disabled, the scale stays 1 and no step is skipped.
///
/// Built from the defaults, changing what differs:
///
/// ```
/// use fused_optim::GradScaler;
///
/// let scaler = GradScaler::default().with_init_scale(1024.0).with_growth_interval(100);
/// assert_eq!((scaler.init_scale, scaler.growth_interval), (1024.0, 100));
/// assert_eq!(scaler.growth_factor, 2.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct GradScaler {
    /// The first loss scale (2^16).
    pub init_scale: f32,
    /// Multiplies the scale after `growth_interval` clean steps (2.0).
    pub growth_factor: f32,
    /// Multiplies the scale after a skipped step (0.5).
    pub backoff_factor: f32,
    /// Clean steps in a row before the scale grows (2000).
    pub growth_interval: u32,
    /// Whether the scaler does anything (true).
    pub enabled: bool,
}

impl Default for GradScaler {
    /// `torch.amp.GradScaler()`: see [`GradScaler::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl GradScaler {
    /// `torch.amp.GradScaler()`'s defaults: `init_scale` 2^16, `growth_factor` 2,
    /// `backoff_factor` 0.5, `growth_interval` 2000, enabled. The same as `default()`.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
        }
    }

    /// `init_scale`: the first loss scale.
    #[must_use]
    pub const fn with_init_scale(mut self, init_scale: f32) -> Self {
        self.init_scale = init_scale;
        self
    }

    /// `growth_factor`: multiplies the scale after `growth_interval` clean steps (above 1).
    #[must_use]
    pub const fn with_growth_factor(mut self, growth_factor: f32) -> Self {
        self.growth_factor = growth_factor;
        self
    }

    /// `backoff_factor`: multiplies the scale after a skipped step (between 0 and 1).
    #[must_use]
    pub const fn with_backoff_factor(mut self, backoff_factor: f32) -> Self {
        self.backoff_factor = backoff_factor;
        self
    }

    /// `growth_interval`: clean steps in a row before the scale grows (at least 1).
    #[must_use]
    pub const fn with_growth_interval(mut self, growth_interval: u32) -> Self {
        self.growth_interval = growth_interval;
        self
    }

    /// `enabled`: whether the scaler does anything (disabled, the scale stays 1 and no step
    /// is skipped).
    #[must_use]
    pub const fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

/// Which norm [`ClipGradNorm`] clips: `clip_grad_norm_`'s `norm_type` 2 or inf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormType {
    /// The Euclidean norm over every element of every tensor.
    #[default]
    L2,
    /// The largest absolute value.
    Inf,
}

/// `clip_grad_norm_(max_norm, norm_type)` over all the optimizer's grads: every grad is
/// multiplied by `min(max_norm / (total_norm + 1e-6), 1)`.
///
/// ```
/// use fused_optim::{ClipGradNorm, NormType};
///
/// let l2 = ClipGradNorm::new(1.0); // clip_grad_norm_(params, 1.0)
/// let inf = ClipGradNorm::new(1.0).with_norm_type(NormType::Inf); // norm_type=inf
/// assert_eq!((l2.norm_type, inf.max_norm), (NormType::L2, 1.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClipGradNorm {
    /// The largest total norm the grads keep.
    pub max_norm: f32,
    /// The norm measured.
    pub norm_type: NormType,
}

impl ClipGradNorm {
    /// `clip_grad_norm_(params, max_norm)`: the L2 norm, as PyTorch's default `norm_type` 2.
    #[must_use]
    pub const fn new(max_norm: f32) -> Self {
        Self {
            max_norm,
            norm_type: NormType::L2,
        }
    }

    /// `norm_type`: the norm measured, L2 or inf.
    #[must_use]
    pub const fn with_norm_type(mut self, norm_type: NormType) -> Self {
        self.norm_type = norm_type;
        self
    }
}

/// What a step does to the grads before the update (see the module's docs): an optional loss
/// scaler, clipping by value, then clipping by global norm. Give it to an optimizer with
/// `with_grad_guard`; the default does nothing but measure the norm.
///
/// Built from [`GradGuard::new`] (or `default()`), adding each part the step needs:
///
/// ```
/// use fused_optim::{ClipGradNorm, GradGuard, GradScaler};
///
/// // scaler = GradScaler(); scaler.unscale_(opt); clip_grad_norm_(params, 1.0)
/// let guard = GradGuard::new()
///     .with_scaler(GradScaler::default())
///     .with_clip_norm(ClipGradNorm::new(1.0));
/// assert_eq!(guard.clip_value, None);
/// guard.validate()?;
/// # Ok::<(), fused_optim::Error>(())
/// ```
///
/// The fields are public to read (and to set, `guard.scaler = None`), not to build: later
/// versions may add settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct GradGuard {
    /// Unscale the grads, skip steps with an inf or NaN grad, adapt the scale.
    pub scaler: Option<GradScaler>,
    /// `clip_grad_value_`: clamp each unscaled grad to `[-clip_value, clip_value]`.
    pub clip_value: Option<f32>,
    /// `clip_grad_norm_` over the unscaled (and value-clipped) grads.
    pub clip_norm: Option<ClipGradNorm>,
}

impl GradGuard {
    /// No scaler and no clipping: the step only measures the norm. The same as `default()`.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            scaler: None,
            clip_value: None,
            clip_norm: None,
        }
    }

    /// Loss scaling as `torch.amp.GradScaler` with these settings: unscale the grads, skip
    /// steps with an inf or NaN grad, adapt the scale.
    #[must_use]
    pub const fn with_scaler(mut self, scaler: GradScaler) -> Self {
        self.scaler = Some(scaler);
        self
    }

    /// `clip_grad_value_(params, clip_value)`: clamp each unscaled grad to
    /// `[-clip_value, clip_value]`.
    #[must_use]
    pub const fn with_clip_value(mut self, clip_value: f32) -> Self {
        self.clip_value = Some(clip_value);
        self
    }

    /// `clip_grad_norm_` over the unscaled (and value-clipped) grads.
    #[must_use]
    pub const fn with_clip_norm(mut self, clip_norm: ClipGradNorm) -> Self {
        self.clip_norm = Some(clip_norm);
        self
    }

    /// Rejects what `GradScaler` and the clipping functions reject, naming the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason: String| Err(Error::InvalidGuard { reason });
        if let Some(scaler) = self.scaler {
            if !(scaler.init_scale.is_finite() && scaler.init_scale > 0.0) {
                return fail(format!(
                    "init_scale must be finite and positive, not {}",
                    scaler.init_scale
                ));
            }
            if !(scaler.growth_factor.is_finite() && scaler.growth_factor > 1.0) {
                return fail(format!(
                    "growth_factor must be finite and above 1, not {}",
                    scaler.growth_factor
                ));
            }
            if !(scaler.backoff_factor > 0.0 && scaler.backoff_factor < 1.0) {
                return fail(format!(
                    "backoff_factor must be between 0 and 1, not {}",
                    scaler.backoff_factor
                ));
            }
            if scaler.growth_interval == 0 {
                return fail("growth_interval must be at least 1".to_owned());
            }
        }
        if let Some(value) = self.clip_value {
            if value.is_nan() || value < 0.0 {
                return fail(format!("clip_value must be at least 0, not {value}"));
            }
        }
        if let Some(clip) = self.clip_norm {
            if !(clip.max_norm >= 0.0 && clip.max_norm.is_finite()) {
                return fail(format!(
                    "max_norm must be finite and at least 0, not {}",
                    clip.max_norm
                ));
            }
        }
        Ok(())
    }

    /// Whether a step can be skipped (an enabled scaler).
    pub fn skips(&self) -> bool {
        self.scaler.is_some_and(|scaler| scaler.enabled)
    }

    /// The bound of value clipping (inf without it).
    pub(crate) fn value_bound(&self) -> f32 {
        self.clip_value.unwrap_or(f32::INFINITY)
    }

    /// The loss scale a change of settings from `self` to `next` starts from, where it
    /// switches the scaler on or off: `next`'s `init_scale` for a scaler switched on (a fresh
    /// `GradScaler`, whatever an earlier one reached), 1 for one switched off. `None` where
    /// the scaler stays on (its scale and growth tracker carry on under the new factors and
    /// interval) or stays off.
    pub(crate) fn restarted_scale(&self, next: &GradGuard) -> Option<f32> {
        match (self.skips(), next.scaler.filter(|s| s.enabled)) {
            (false, Some(scaler)) => Some(scaler.init_scale),
            (true, None) => Some(1.0),
            _ => None,
        }
    }
}

/// The guard's state: the scaler's state, and what the last step found. Read it with an
/// optimizer's `grad_status` (the newest one already on the host, no wait),
/// `read_grad_status` (waits) or `loss_scale` (the newest scale, no wait).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GradStatus {
    /// The loss scale for the next backward pass (1 without an enabled scaler). It is also
    /// the first f32 of the optimizer's `grad_status_buffer`, for the caller's backward pass
    /// to multiply the loss by, without a readback.
    pub scale: f32,
    /// Clean steps in a row since the scale last changed.
    pub growth_tracker: u32,
    /// Steps applied: PyTorch's `state["step"]`, which a skipped step does not advance.
    pub applied: u32,
    /// Steps skipped for an inf or NaN grad.
    pub skipped: u32,
    /// Whether the last step found an inf or NaN grad.
    pub found_inf: bool,
    /// The last step's total norm of the unscaled grads (inf or NaN where one is).
    pub total_norm: f32,
    /// The last step's `1 / scale`.
    pub inv_scale: f32,
    /// The last step's clipping coefficient (1 without norm clipping).
    pub clip_coef: f32,
    /// The last step's number, `applied + 1` before it ran: what its bias corrections used.
    pub t: u32,
    /// Whether the last step was skipped.
    pub skip: bool,
}

/// [`GradStatus`] as the device keeps it (`GuardStatus` in guard.wgsl), flags as words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub(crate) struct StatusWords {
    pub(crate) scale: f32,
    pub(crate) growth_tracker: u32,
    pub(crate) applied: u32,
    pub(crate) skipped: u32,
    pub(crate) found_inf: u32,
    pub(crate) total_norm: f32,
    pub(crate) inv_scale: f32,
    pub(crate) clip_coef: f32,
    pub(crate) t: u32,
    pub(crate) skip: u32,
    pub(crate) pad: [u32; 2],
}

impl From<StatusWords> for GradStatus {
    fn from(words: StatusWords) -> Self {
        Self {
            scale: words.scale,
            growth_tracker: words.growth_tracker,
            applied: words.applied,
            skipped: words.skipped,
            found_inf: words.found_inf != 0,
            total_norm: words.total_norm,
            inv_scale: words.inv_scale,
            clip_coef: words.clip_coef,
            t: words.t,
            skip: words.skip != 0,
        }
    }
}

impl From<GradStatus> for StatusWords {
    fn from(status: GradStatus) -> Self {
        Self {
            scale: status.scale,
            growth_tracker: status.growth_tracker,
            applied: status.applied,
            skipped: status.skipped,
            found_inf: status.found_inf as u32,
            total_norm: status.total_norm,
            inv_scale: status.inv_scale,
            clip_coef: status.clip_coef,
            t: status.t,
            skip: status.skip as u32,
            pad: [0; 2],
        }
    }
}

impl GradStatus {
    /// The status before the first step, after `applied` steps without a guard.
    pub(crate) fn initial(guard: &GradGuard, applied: u32) -> Self {
        Self {
            applied,
            scale: match guard.scaler {
                Some(scaler) if scaler.enabled => scaler.init_scale,
                _ => 1.0,
            },
            inv_scale: 1.0,
            clip_coef: 1.0,
            ..Self::default()
        }
    }
}

/// How the grads enter a step's update, from the step's reduction: the CPU twin of what the
/// update kernel reads from the device's status.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradStep {
    /// Whether the step updates nothing.
    pub skip: bool,
    /// Multiplies each grad first.
    pub inv_scale: f32,
    /// Clamps each unscaled grad to `[-clip_value, clip_value]` (inf without value clipping).
    pub clip_value: f32,
    /// Multiplies each clamped grad last.
    pub clip_coef: f32,
}

impl GradStep {
    /// The step without a guard: grads as they are.
    pub const PLAIN: GradStep = GradStep {
        skip: false,
        inv_scale: 1.0,
        clip_value: f32::INFINITY,
        clip_coef: 1.0,
    };

    /// The unscaled, value-clipped grad the reduction measures (guard.wgsl `unscaled`): a NaN
    /// stays NaN, an inf is clamped like any value.
    pub fn unscaled(&self, g: f32) -> f32 {
        let x = g * self.inv_scale;
        match x.is_nan() {
            true => x,
            false => x.min(self.clip_value).max(-self.clip_value),
        }
    }

    /// The grad the rule receives (guard.wgsl `guard_grad`).
    pub fn grad(&self, g: f32) -> f32 {
        self.unscaled(g) * self.clip_coef
    }
}

/// Elements one reduction workgroup takes: 256 invocations, each merging 16 runs of 16
/// consecutive elements into one partial (invocation `l` takes elements
/// `16 * (l + 256 * r) + k` of the chunk, k in 0..16, as run `r`).
pub const REDUCTION_CHUNK: usize = 65536;

/// Elements per run; runs per partial.
const RUN: usize = 16;

/// What a grad guard's reduction knows of some grads (guard.wgsl's `Partial`, operation for
/// operation; 16 bytes, as the device stores it): a sum of squares that no finite grads
/// overflow or flush, `sum * 4^(exponent - 127)`, the largest finite magnitude and the largest
/// magnitude's bit pattern (`worst`: 0x7f800000 for an inf, above for a NaN). A run of 16
/// grads is scaled by a power of two from its own largest magnitude, so each square is below
/// 16; merging two partials scales the one of the smaller exponent down by a power of two,
/// exactly, so any number of partials combine without overflow.
///
/// A shard's half of a split guard writes one
/// ([`ParamSet::record_grad_partial`](crate::ParamSet::record_grad_partial)); the caller
/// gathers every shard's, in rank order, for the step's other half.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GradPartial {
    /// The scaled sum of squares of the value-clipped, unscaled grads.
    pub sum: f32,
    /// The f32 exponent field of the scale: the sum of squares is `sum * 4^(exponent - 127)`.
    pub exponent: u32,
    /// The largest finite magnitude (the inf norm).
    pub max: f32,
    /// The largest magnitude's bits: 0x7f800000 and above where a grad was inf or NaN.
    pub worst: u32,
}

type Partial = GradPartial;

impl Default for Partial {
    fn default() -> Self {
        Self {
            sum: 0.0,
            exponent: 1,
            max: 0.0,
            worst: 0,
        }
    }
}

/// `sum * 4^(own - to)` for `own <= to`: exact, or 0 where it is below 2^-120 of the sum it
/// joins.
fn shrink(sum: f32, own: u32, to: u32) -> f32 {
    let d = to - own;
    match d <= 60 {
        true => sum * f32::from_bits((127 - 2 * d) << 23),
        false => 0.0,
    }
}

impl Partial {
    /// The two merged: guard.wgsl's `merge`.
    fn merge(self, q: Partial) -> Partial {
        let exponent = self.exponent.max(q.exponent);
        Partial {
            sum: shrink(self.sum, self.exponent, exponent) + shrink(q.sum, q.exponent, exponent),
            exponent,
            max: self.max.max(q.max),
            worst: self.worst.max(q.worst),
        }
    }

    /// The partial of a run of 16 grads (`x` unscaled, 0 past the end), as guard.wgsl's
    /// `run_partial` forms it from four vectors of four consecutive ones: flags from `x`, the
    /// norm from `x` value-clipped to `bound`.
    fn of_run(x: &[f32; RUN], bound: f32) -> Self {
        let bits = x.map(|x| x.to_bits() & 0x7fff_ffff);
        let a: [f32; RUN] = std::array::from_fn(|k| match bits[k] < 0x7f80_0000 {
            true => x[k].max(-bound).min(bound).abs(),
            false => 0.0,
        });
        // Vector `v` holds elements 4v..4v+4; lane `c` of the four vectors is a column.
        let m4: [f32; 4] =
            std::array::from_fn(|c| (a[c].max(a[4 + c])).max(a[8 + c].max(a[12 + c])));
        let m = m4[0].max(m4[1]).max(m4[2].max(m4[3]));
        let e = (m.to_bits() >> 23).clamp(1, 253);
        let s = f32::from_bits((254 - e) << 23);
        let y = a.map(|a| a * s);
        let t: [f32; 4] = std::array::from_fn(|c| {
            y[c] * y[c] + y[4 + c] * y[4 + c] + y[8 + c] * y[8 + c] + y[12 + c] * y[12 + c]
        });
        Partial {
            sum: (t[0] + t[1]) + (t[2] + t[3]),
            exponent: e,
            max: m,
            worst: bits.into_iter().max().unwrap_or(0),
        }
    }

    /// Whether a grad was inf or NaN.
    pub fn found_inf(&self) -> bool {
        self.worst >= 0x7f80_0000
    }
}

/// `partials` merged in order.
fn merge_in_order(partials: impl IntoIterator<Item = Partial>) -> Partial {
    partials
        .into_iter()
        .fold(Partial::default(), Partial::merge)
}

/// The 256 partials of one chunk of up to 65536 grads, as one reduction workgroup forms them.
fn chunk_partials(chunk: &[f32], step: GradStep) -> impl Iterator<Item = Partial> + '_ {
    (0..256).map(move |l| {
        merge_in_order((0..RUN).map(|r| {
            let first = RUN * (l + 256 * r);
            let run: [f32; RUN] =
                std::array::from_fn(|k| chunk.get(first + k).map_or(0.0, |&g| g * step.inv_scale));
            Partial::of_run(&run, step.clip_value)
        }))
    })
}

/// The merge of every partial, as guard.wgsl's `finalize` does: invocation `l` of 256 merges
/// partials `l`, `l + 256`, ... in order, then sixteen merge sixteen each, then the first
/// merges those sixteen.
fn combine(partials: &[Partial]) -> Partial {
    let lanes: Vec<Partial> = (0..256)
        .map(|l| merge_in_order(partials.iter().skip(l).step_by(256).copied()))
        .collect();
    merge_in_order(
        lanes
            .chunks(RUN)
            .map(|run| merge_in_order(run.iter().copied())),
    )
}

/// The total norm from the combined partial (NaN or inf where a grad was).
fn total_norm(total: Partial, norm_type: NormType) -> f32 {
    if total.worst > 0x7f80_0000 {
        return f32::NAN;
    }
    if total.worst == 0x7f80_0000 {
        return f32::INFINITY;
    }
    match norm_type {
        NormType::Inf => total.max,
        NormType::L2 => total.sum.sqrt() * f32::from_bits(total.exponent << 23),
    }
}

/// The CPU twin of a guard on the device: the scaler's state and the reduction, performing
/// guard.wgsl's f32 operations in its order. Call [`CpuGuard::check`] with every grad of the
/// optimizer, then step each tensor's [`CpuOptimizer`](crate::CpuOptimizer) with the
/// [`GradStep`] it returns.
#[derive(Clone, Debug)]
pub struct CpuGuard {
    guard: GradGuard,
    status: GradStatus,
}

impl CpuGuard {
    /// The twin of an optimizer's `with_grad_guard(guard)`.
    pub fn new(guard: GradGuard) -> Result<Self> {
        Self::after(guard, 0)
    }

    /// [`CpuGuard::new`] for an optimizer that has applied `applied` steps unguarded.
    pub(crate) fn after(guard: GradGuard, applied: u32) -> Result<Self> {
        guard.validate()?;
        Ok(Self {
            guard,
            status: GradStatus::initial(&guard, applied),
        })
    }

    /// Sets the guard a twin keeps in `slot`: a new setting for the one there (its scaler's
    /// state kept), or a guard starting after `applied` unguarded steps. On error nothing
    /// changed.
    pub(crate) fn install(
        slot: &mut Option<CpuGuard>,
        guard: GradGuard,
        applied: u64,
    ) -> Result<()> {
        match slot {
            Some(twin) => twin.set_guard(guard),
            None => {
                *slot = Some(CpuGuard::after(guard, applied as u32)?);
                Ok(())
            }
        }
    }

    /// The status as the device would hold it now.
    pub fn status(&self) -> GradStatus {
        self.status
    }

    /// The twin of an optimizer's `set_grad_guard(guard)`: later steps run under `guard`;
    /// switching the scaler off sets the scale to 1, switching it on starts it at its
    /// `init_scale`, each with the growth tracker at 0. On error nothing changed.
    pub fn set_guard(&mut self, guard: GradGuard) -> Result<()> {
        guard.validate()?;
        if let Some(scale) = self.guard.restarted_scale(&guard) {
            self.status.scale = scale;
            self.status.growth_tracker = 0;
        }
        self.guard = guard;
        Ok(())
    }

    /// Reduces the grads of one step, `runs` in the optimizer's order (an optimizer's one
    /// tensor; a foreach optimizer's tensors; a parameter set's groups, each the packed run
    /// of its tensors, padding included), as f32 (16-bit grads decoded, which is exact), and
    /// advances the scaler as the device does. Returns how the step's update takes the grads.
    pub fn check(&mut self, runs: &[&[f32]]) -> GradStep {
        let total = combine(&self.chunk_partials(runs));
        self.finish(total)
    }

    /// A shard's half of a split guard: the merged partial of its grads, `runs` as
    /// [`CpuGuard::check`] takes them (a shard's parts of its groups), under the current
    /// scale. Changes nothing.
    pub fn partial(&self, runs: &[&[f32]]) -> GradPartial {
        combine(&self.chunk_partials(runs))
    }

    /// The other half: the step's check from every shard's partial in rank order, advancing
    /// the scaler as [`CpuGuard::check`] does.
    pub fn check_partials(&mut self, partials: &[GradPartial]) -> GradStep {
        let total = combine(partials);
        self.finish(total)
    }

    /// How the current step takes the grads before the check decides skip and clipping.
    fn probe(&self) -> GradStep {
        GradStep {
            skip: false,
            inv_scale: 1.0 / self.status.scale,
            clip_value: self.guard.value_bound(),
            clip_coef: 1.0,
        }
    }

    /// The partials of every chunk of `runs`, as the reduction's workgroups write them.
    fn chunk_partials(&self, runs: &[&[f32]]) -> Vec<Partial> {
        let probe = self.probe();
        let mut partials = Vec::new();
        for run in runs {
            for chunk in run.chunks(REDUCTION_CHUNK) {
                partials.extend(chunk_partials(chunk, probe));
            }
        }
        partials
    }

    /// The finalize: the norm, clipping and skip from the merged partial `total`, and the
    /// scaler advanced.
    fn finish(&mut self, total: Partial) -> GradStep {
        let probe = self.probe();
        let inv_scale = probe.inv_scale;
        let norm_type = self.guard.clip_norm.map_or(NormType::L2, |c| c.norm_type);
        let norm = total_norm(total, norm_type);
        let clip_coef = match self.guard.clip_norm {
            Some(clip) => match clip.max_norm / (norm + 1e-6) {
                coef if coef.is_nan() => coef,
                coef => coef.min(1.0),
            },
            None => 1.0,
        };
        let found_inf = total.found_inf();
        let skip = found_inf && self.guard.skips();
        let status = &mut self.status;
        status.found_inf = found_inf;
        status.total_norm = norm;
        status.inv_scale = inv_scale;
        status.clip_coef = clip_coef;
        status.t = status.applied + 1;
        status.skip = skip;
        if let Some(scaler) = self.guard.scaler.filter(|s| s.enabled) {
            if found_inf {
                status.scale *= scaler.backoff_factor;
                status.growth_tracker = 0;
                status.skipped += 1;
            } else if status.growth_tracker + 1 >= scaler.growth_interval {
                let grown = status.scale * scaler.growth_factor;
                if grown.is_finite() {
                    status.scale = grown;
                }
                status.growth_tracker = 0;
            } else {
                status.growth_tracker += 1;
            }
        }
        if !skip {
            status.applied += 1;
        }
        GradStep {
            skip,
            clip_coef,
            ..probe
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_they_name() {
        let scaler = GradScaler::new()
            .with_init_scale(1024.0)
            .with_growth_factor(4.0)
            .with_backoff_factor(0.25)
            .with_growth_interval(7)
            .with_enabled(false);
        assert_eq!(
            (
                scaler.init_scale,
                scaler.growth_factor,
                scaler.backoff_factor,
                scaler.growth_interval,
                scaler.enabled
            ),
            (1024.0, 4.0, 0.25, 7, false)
        );
        let torch = GradScaler::default();
        assert_eq!(GradScaler::new(), torch);
        assert_eq!(
            (
                torch.init_scale,
                torch.growth_factor,
                torch.backoff_factor,
                torch.growth_interval,
                torch.enabled
            ),
            (65536.0, 2.0, 0.5, 2000, true)
        );
        // Each builder changes only its own field.
        assert_eq!(torch.with_init_scale(8.0).growth_factor, 2.0);
        assert_eq!(torch.with_growth_interval(3).with_enabled(true), {
            let mut expected = torch;
            expected.growth_interval = 3;
            expected
        });

        let l2 = ClipGradNorm::new(0.5);
        assert_eq!((l2.max_norm, l2.norm_type), (0.5, NormType::L2));
        let inf = l2.with_norm_type(NormType::Inf);
        assert_eq!((inf.max_norm, inf.norm_type), (0.5, NormType::Inf));

        assert_eq!(GradGuard::new(), GradGuard::default());
        let guard = GradGuard::new()
            .with_scaler(scaler)
            .with_clip_value(3.0)
            .with_clip_norm(inf);
        assert_eq!(guard.scaler, Some(scaler));
        assert_eq!(guard.clip_value, Some(3.0));
        assert_eq!(guard.clip_norm, Some(inf));
        assert_eq!(
            GradGuard::new().with_clip_value(1.0),
            GradGuard {
                scaler: None,
                clip_value: Some(1.0),
                clip_norm: None,
            }
        );
    }
}
