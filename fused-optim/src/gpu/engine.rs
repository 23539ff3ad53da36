//! The stepping machinery every optimizer kind shares: state allocation, the windows and
//! dispatches a step is cut into, cached bind groups, the per-dispatch values and the compute
//! pass. It knows no single rule and no single way of laying out tensors: an optimizer
//! describes its caller's buffer pairs as targets and says which group's rule updates which
//! elements of each.

use std::collections::HashMap;
use std::sync::Arc;

use super::context::GpuContext;
use super::glue::{roles, KernelFormats, Role};
use super::guard::{DeviceGuard, Staged, Then};
use super::kernel::{
    dispatch_grid, step_values, values_size, DispatchValues, Kernel, KernelKey, StepValues,
};
use super::plan::{dispatches, windows, Dispatch, Grain, Span, Window};
use super::step_kernel::StepKernel;
use super::values::ValueSlots;
use crate::error::{Error, Result};
use crate::format::{codec, correction, Dtype, Master, Precision, StateFormat, BLOCK};
use crate::guard::{GradGuard, GradStatus};

mod checkpoint;
mod submissions;

pub(crate) use checkpoint::NamedTensor;
pub use checkpoint::PendingCheckpoint;
use submissions::{encoder_id, Ahead, Submissions, Work};

/// Fused steps over `targets` caller buffer pairs, each element updated by its group's rule,
/// in its group's storage formats.
pub(crate) struct Engine<R: StepKernel> {
    context: GpuContext,
    pub groups: Vec<R>,
    pub precisions: Vec<Precision>,
    pub steps: u64,
    /// Each group's host state (a rule's `HOST_STATE`) as of step `steps`.
    pub host: Vec<Vec<f64>>,
    /// Elements of each target.
    lens: Vec<u64>,
    /// Each target's (params, grads) formats.
    dtypes: Vec<(Dtype, Dtype)>,
    /// Each group's kernel formats (which slots it keeps, and how).
    formats: Vec<KernelFormats>,
    spans: Vec<Span>,
    /// Per span, the buffers the optimizer owns for it (master, state values, scales).
    owned: Vec<SpanBuffers>,
    windows: Vec<Window>,
    dispatches: Vec<Dispatch>,
    /// Each dispatch's kernel: its group's rule and formats, vector or scalar.
    kernels: Vec<Arc<Kernel>>,
    values: ValueSlots,
    workgroups_per_dimension: u32,
    /// The (params, grads) pair each target was last bound to, and each dispatch's bind
    /// group; reused while the caller passes the same buffers.
    bound: Vec<Option<(wgpu::Buffer, wgpu::Buffer)>>,
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// The grad guard, where the optimizer has one.
    guard: Option<Guarded>,
    /// The mappable copies of the last checkpoint read back, kept for the next one: a fresh
    /// buffer costs several times the copy itself (its pages are faulted in and zeroed).
    checkpoint_copies: std::sync::Arc<std::sync::Mutex<Vec<wgpu::Buffer>>>,
    /// The steps and checkpoints recorded into callers' encoders not yet seen submitted.
    submissions: Submissions,
    /// For a shard of a packed layout, its range: what needs every shard is refused.
    pub shard: Option<std::ops::Range<u64>>,
}

/// The buffers an engine owns for one span (master, state values, scales), by role.
type SpanBuffers = Vec<(Role, wgpu::Buffer)>;

/// Where a guarded step's check of the grads comes from.
#[derive(Clone, Copy)]
pub(crate) enum Reduction<'a> {
    /// The guard's own reduction over the step's grads.
    Own,
    /// A split guard's second half: the caller's buffer of every shard's partial, in rank
    /// order, and how many there are.
    Gathered(&'a wgpu::Buffer, u32),
}

/// Refuses a buffer of gathered partials the finalize cannot bind or read `count` from.
fn check_gathered(gathered: &wgpu::Buffer, count: u32) -> Result<()> {
    if !gathered.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::MissingUsage {
            buffer: "gathered partials".into(),
            usage: "STORAGE",
        });
    }
    let bytes = count as u64 * std::mem::size_of::<crate::GradPartial>() as u64;
    if count == 0 || gathered.size() < bytes {
        return Err(Error::InvalidGuard {
            reason: format!(
                "{count} gathered partials need a buffer of {bytes} bytes (16 each, at least \
                 one); this one has {}",
                gathered.size()
            ),
        });
    }
    Ok(())
}

/// A guard and the host state of each group after each step count the device may hold.
struct Guarded {
    device: DeviceGuard,
    history: HostHistory,
}

/// Every group's host state after a run of step counts: `states[k]` after `base + k` applied
/// steps.
#[derive(Clone)]
pub(crate) struct HostHistory {
    states: std::collections::VecDeque<Vec<Vec<f64>>>,
    base: u64,
}

impl HostHistory {
    /// The history of one count: `host` after `applied` steps.
    fn new(host: Vec<Vec<f64>>, applied: u64) -> Self {
        Self {
            states: [host].into(),
            base: applied,
        }
    }

    /// The host state after `applied` steps, where the history holds it.
    pub fn after(&self, applied: u64) -> Option<&Vec<Vec<f64>>> {
        applied
            .checked_sub(self.base)
            .and_then(|k| self.states.get(k as usize))
    }
}

/// Each target's grads format, from its (params, grads) formats.
fn grads_formats(dtypes: &[(Dtype, Dtype)]) -> Vec<Dtype> {
    dtypes.iter().map(|&(_, grads)| grads).collect()
}

/// How one role's elements sit in its buffer, for binding ranges.
fn storage_of(role: Role, formats: &KernelFormats, dtypes: (Dtype, Dtype)) -> Storage {
    let dtype = |dtype: Dtype| match dtype {
        Dtype::F32 => Storage::F32,
        _ => Storage::Half,
    };
    match role {
        Role::Params => dtype(dtypes.0),
        Role::Grads => dtype(dtypes.1),
        Role::Master => match formats.master {
            Master::Bf16Remainder => Storage::Half,
            Master::Bf16Correction => Storage::Codes(8),
            _ => Storage::F32,
        },
        Role::Slot(slot) => Storage::Codes(formats.slots[slot].unwrap_or_default().bits()),
        Role::Scales(slot) => {
            let format = formats.slots[slot].unwrap_or_default();
            Storage::Scales(format)
        }
        Role::GuardResolved | Role::GuardScalars => Storage::Whole,
    }
}

#[derive(Clone, Copy)]
enum Storage {
    F32,
    Half,
    /// Values or codes of this many bits.
    Codes(u64),
    /// The scales of a block format's blocks.
    Scales(StateFormat),
    Whole,
}

impl Storage {
    /// The byte range of elements `first..first + count` (whole words and blocks).
    fn range(self, first: u64, count: u64) -> (u64, Option<wgpu::BufferSize>) {
        let (offset, size) = match self {
            Storage::F32 => (first * 4, count * 4),
            Storage::Half => (first * 2, count.div_ceil(2) * 4),
            Storage::Codes(bits) => (first * bits / 8, (count * bits).div_ceil(32) * 4),
            Storage::Scales(format) => {
                let per = format.blocks().map_or(0, |f| f.scale_bytes());
                (first / BLOCK * per, format.scale_bytes(count))
            }
            Storage::Whole => return (0, None),
        };
        (offset, wgpu::BufferSize::new(size))
    }
}

impl<R: StepKernel> Engine<R> {
    /// Validates every group's rule and precision, compiles (or reuses) their kernels and
    /// allocates the state of `spans` over targets of `lens` elements. Checks every size
    /// before allocating anything, and keeps nothing if an allocation fails.
    pub fn new(
        context: &GpuContext,
        groups: Vec<R>,
        precisions: Vec<Precision>,
        lens: Vec<u64>,
        spans: &[Span],
    ) -> Result<Self> {
        Self::validate_groups(&groups, &precisions)?;
        if lens.contains(&0) {
            return Err(Error::EmptyParams);
        }
        let dtypes = target_dtypes(lens.len(), spans, &precisions)?;
        // Sizes are checked before anything is planned or allocated: a length no buffer can
        // hold is refused here, not found out by cutting it into windows.
        check_target_sizes(context, &lens)?;
        let formats = Self::kernel_formats(&groups, &precisions);
        let windows = plan_windows(context, spans, &formats);
        let dispatches = dispatches(&windows);
        let values = Self::checked_step_values(context, dispatches.len())?;
        let kernels = build_kernels(context, &groups, &formats, &windows, &dispatches)?;
        let (values, owned) = Self::allocate(
            context,
            (&groups, &formats),
            spans,
            values,
            dispatches.len(),
        )?;
        Ok(Self {
            context: context.clone(),
            host: groups.iter().map(StepKernel::initial_host_state).collect(),
            groups,
            precisions,
            steps: 0,
            kernels,
            bound: vec![None; lens.len()],
            lens,
            dtypes,
            formats,
            spans: spans.to_vec(),
            owned,
            bind_groups: vec![None; dispatches.len()],
            windows,
            dispatches,
            values,
            workgroups_per_dimension: context.dispatch_limits().workgroups_per_dimension,
            guard: None,
            checkpoint_copies: Default::default(),
            submissions: Submissions::default(),
            shard: None,
        })
    }

    /// Validates every group's rule, and its precision for the rule's kernels.
    fn validate_groups(groups: &[R], precisions: &[Precision]) -> Result<()> {
        for (rule, precision) in groups.iter().zip(precisions) {
            rule.validate()?;
            precision.validate(R::STATE_SLOTS)?;
            if R::OWN_ENTRY_POINT && *precision != Precision::default() {
                return Err(Error::InvalidPrecision {
                    reason: format!("{} runs in f32 only", rule.name()),
                });
            }
        }
        Ok(())
    }

    /// Each group's kernel formats: its precision's, and which slots its rule keeps, unguarded.
    fn kernel_formats(groups: &[R], precisions: &[Precision]) -> Vec<KernelFormats> {
        groups
            .iter()
            .zip(precisions)
            .map(|(rule, precision)| KernelFormats {
                params: precision.params,
                grads: precision.grads,
                master: precision.master,
                rounding: precision.rounding,
                slots: R::STATE_SLOTS
                    .iter()
                    .map(|slot| rule.keeps_state(slot).then(|| precision.state_format(slot)))
                    .collect(),
                guarded: false,
            })
            .collect()
    }

    /// The uniform slots of `dispatches` dispatches' values (passed as `values` says) and
    /// each span's buffers for its group's rule in its formats, in one error scope: an
    /// allocation that fails keeps nothing.
    fn allocate(
        context: &GpuContext,
        (groups, formats): (&[R], &[KernelFormats]),
        spans: &[Span],
        values: StepValues,
        dispatches: usize,
    ) -> Result<(ValueSlots, Vec<SpanBuffers>)> {
        context.scoped("allocating optimizer state", || {
            let values = ValueSlots::new(context.device(), values, values_size::<R>(), dispatches);
            let owned = spans
                .iter()
                .map(|span| {
                    span_buffers(
                        context,
                        &groups[span.group],
                        &formats[span.group],
                        span.end - span.start,
                    )
                })
                .collect();
            (values, owned)
        })
    }

    /// How the context passes the values of `dispatches` dispatches, once their uniform is
    /// known to fit a buffer (dynamic offsets into it are u32).
    fn checked_step_values(context: &GpuContext, dispatches: usize) -> Result<StepValues> {
        let values = context.step_values_for(values_size::<R>());
        let bytes =
            ValueSlots::bytes_needed(context.device(), values, values_size::<R>(), dispatches);
        let limit = context.limits().max_buffer_size.min(u32::MAX as u64);
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "the uniform of the step's values",
                bytes,
                limit,
            });
        }
        Ok(values)
    }

    /// Puts every later step under `guard`. The first guard compiles the guarded kernels and
    /// allocates the guard's buffers, its scale starting at the scaler's `init_scale`; a later
    /// one changes the settings and keeps the counts, and the scale while the scaler stays on
    /// (see [`GradGuard::restarted_scale`]). On error nothing changed.
    pub fn set_guard(&mut self, guard: GradGuard) -> Result<()> {
        guard.validate()?;
        if let Some(guarded) = &mut self.guard {
            let restarted = guarded.device.settings.restarted_scale(&guard);
            if let Some(scale) = restarted {
                // The new scale is written ahead of the next submission: every recorded step
                // must be submitted already, or it would run with it.
                let operation = "switching the loss scaler on or off";
                self.submissions
                    .check(&self.context, Ahead::Write, operation)?;
                guarded.device.restart_scale(self.steps, scale);
            }
            guarded.device.settings = guard;
            return Ok(());
        }
        if R::OWN_ENTRY_POINT {
            return Err(Error::InvalidGuard {
                reason: format!("{} has no grad guard", self.groups[0].name()),
            });
        }
        if self.steps > u32::MAX as u64 {
            return Err(Error::InvalidGuard {
                reason: "the device counts a guarded optimizer's steps in 32 bits".to_owned(),
            });
        }
        let formats: Vec<KernelFormats> = self
            .formats
            .iter()
            .map(|f| KernelFormats {
                guarded: true,
                ..f.clone()
            })
            .collect();
        let kernels = build_kernels(
            &self.context,
            &self.groups,
            &formats,
            &self.windows,
            &self.dispatches,
        )?;
        let grads = grads_formats(&self.dtypes);
        let device = self.context.scoped("allocating the grad guard", || {
            DeviceGuard::new(
                &self.context,
                guard,
                &self.spans,
                &grads,
                (self.groups.len(), std::mem::size_of::<R::Scalars>() as u64),
                self.steps,
            )
        })?;
        self.guard = Some(Guarded {
            device,
            history: HostHistory::new(self.host.clone(), self.steps),
        });
        self.formats = formats;
        self.kernels = kernels;
        self.bound.iter_mut().for_each(|pair| *pair = None);
        Ok(())
    }

    /// The guard's settings, where there is one.
    pub fn guard(&self) -> Option<&GradGuard> {
        self.guard.as_ref().map(|g| &g.device.settings)
    }

    /// The guard's status buffer (the loss scale is its first f32).
    pub fn guard_status_buffer(&self) -> Option<&wgpu::Buffer> {
        self.guard.as_ref().map(|g| g.device.status())
    }

    /// The newest guard status the host has without waiting, and the step it followed.
    pub fn newest_guard_status(&self) -> Option<(u64, GradStatus)> {
        self.guard.as_ref().and_then(|g| g.device.newest())
    }

    /// The loss scale for the next backward pass as far as the host knows, without waiting.
    pub fn loss_scale(&self) -> Option<f32> {
        self.guard.as_ref().map(|g| g.device.scale())
    }

    /// The guard's status once every submitted step has run. Waits for the GPU.
    pub async fn read_guard_status(&self) -> Result<Option<GradStatus>> {
        match &self.guard {
            Some(guarded) => guarded.device.read_status().await.map(Some),
            None => Ok(None),
        }
    }

    /// The steps applied and each group's host state after them: the step count and host
    /// state PyTorch would report. Without a guard, every step recorded; with one, what the
    /// device counted, which waits for the GPU.
    pub async fn applied(&self) -> Result<(u64, Vec<Vec<f64>>)> {
        let Some(guarded) = &self.guard else {
            // The host counts steps as they are recorded: each must have been submitted for
            // the count to be that of the state the GPU holds.
            let operation = "reading the step count";
            self.submissions
                .check(&self.context, Ahead::Read, operation)?;
            return Ok((self.steps, self.host.clone()));
        };
        let applied = guarded.device.read_status().await?.applied as u64;
        let host = guarded
            .history
            .after(applied)
            .cloned()
            .unwrap_or_else(|| self.host.clone());
        Ok((applied, host))
    }

    /// How many (params, grads) pairs a step takes.
    pub fn targets(&self) -> usize {
        self.lens.len()
    }

    /// Dispatches per step: one per window, plus one per window ending mid-quantum.
    pub fn dispatches(&self) -> usize {
        self.dispatches.len()
    }

    /// The spans, in the order the optimizer gave them.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Refuses `operation` on a shard, which would see only its own part of what it needs.
    pub fn whole(&self, operation: &'static str, instead: &'static str) -> Result<()> {
        match &self.shard {
            Some(shard) => Err(Error::ShardUnsupported {
                operation,
                start: shard.start,
                end: shard.end,
                instead,
            }),
            None => Ok(()),
        }
    }

    /// The buffer span `span` keeps for `role` (a slot's values, or the master), if any.
    pub fn owned_buffer(&self, span: usize, role: Role) -> Option<&wgpu::Buffer> {
        self.owned[span]
            .iter()
            .find(|(owned, _)| *owned == role)
            .map(|(_, buffer)| buffer)
    }

    /// The values of state slot `slot` over span `span`, decoded to f32. Waits for the GPU.
    pub async fn read_slot(&self, span: usize, slot: usize) -> Result<Vec<f32>> {
        self.submissions
            .check(&self.context, Ahead::Read, "reading the state")?;
        let len = (self.spans[span].end - self.spans[span].start) as usize;
        let format = self.formats[self.spans[span].group].slots[slot].unwrap_or_default();
        let download = |role| async move {
            match self.owned_buffer(span, role) {
                Some(buffer) => self.context.download_bytes_async(buffer).await,
                None => Ok(Vec::new()),
            }
        };
        let values = download(Role::Slot(slot)).await?;
        let scales = download(Role::Scales(slot)).await?;
        let non_negative = R::NON_NEGATIVE.contains(&R::STATE_SLOTS[slot]);
        Ok(format.decode(&values, &scales, len, non_negative))
    }

    /// The f32 master weights of span `span`, where its group keeps them. Waits for the GPU.
    /// An f32 master starts as the params: until a step is applied its buffer is unwritten
    /// (the first step reads the params in its place), so the params are what it holds.
    pub async fn read_master(
        &self,
        span: usize,
        params: &wgpu::Buffer,
    ) -> Result<Option<Vec<f32>>> {
        let Span {
            group, start, end, ..
        } = self.spans[span];
        let len = (end - start) as usize;
        let Some(buffer) = self.owned_buffer(span, Role::Master) else {
            return Ok(None);
        };
        self.submissions
            .check(&self.context, Ahead::Read, "reading the master weights")?;
        let precision = &self.precisions[group];
        if precision.master == Master::F32 && self.applied().await?.0 == 0 {
            // Spans of 16-bit params start on a whole pair.
            let first = start * precision.params.element_bytes();
            let bytes = precision.params.buffer_bytes(len as u64);
            let params = self
                .context
                .download_byte_range_async(params, first..first + bytes)
                .await?;
            return Ok(Some(precision.params.decode(&params, len)));
        }
        let master = self.context.download_bytes_async(buffer).await?;
        Ok(Some(match precision.master {
            Master::Bf16Remainder => {
                let (first, count) = (start * 2, (len as u64).div_ceil(2) * 4);
                let params = self
                    .context
                    .download_byte_range_async(params, first..first + count)
                    .await?;
                let halves = |bytes: &[u8]| -> Vec<u16> { bytemuck::pod_collect_to_vec(bytes) };
                halves(&params)
                    .into_iter()
                    .zip(halves(&master))
                    .take(len)
                    .map(|(param, remainder)| codec::join_remainder(param, remainder))
                    .collect()
            }
            Master::Bf16Correction => {
                let (first, count) = (start * 2, (len as u64).div_ceil(2) * 4);
                let params = self
                    .context
                    .download_byte_range_async(params, first..first + count)
                    .await?;
                let halves: Vec<u16> = bytemuck::pod_collect_to_vec(&params);
                halves
                    .into_iter()
                    .zip(master)
                    .take(len)
                    .map(|(param, code)| correction::join(param, code))
                    .collect()
            }
            _ => Dtype::F32.decode(&master, len),
        }))
    }

    /// Bytes of GPU memory allocated: the master and state buffers (block scales included),
    /// the values' uniform, the guard's buffers and the copies kept from the last checkpoint,
    /// each buffer counted once.
    pub fn state_bytes(&self) -> u64 {
        let owned: u64 = self
            .owned
            .iter()
            .flatten()
            .map(|(_, buffer)| buffer.size())
            .sum();
        owned
            + self.values.allocated_bytes()
            + self
                .guard
                .as_ref()
                .map_or(0, |g| g.device.allocated_bytes())
            + self
                .checkpoint_copies
                .lock()
                .expect("not poisoned")
                .iter()
                .map(wgpu::Buffer::size)
                .sum::<u64>()
    }

    /// Bytes one step must move: per window, params read and written, grads read, the master
    /// and every state its group keeps read and written, each in its format; with a guard,
    /// the grads read once more by its reduction.
    pub fn bytes_per_step(&self) -> u64 {
        let grads = grads_formats(&self.dtypes);
        let reduction = self
            .guard
            .as_ref()
            .map_or(0, |g| g.device.bytes_per_step(&grads));
        let update: u64 = self
            .windows
            .iter()
            .map(|window| {
                let rule = &self.groups[window.group];
                let kept = R::STATE_SLOTS
                    .iter()
                    .copied()
                    .filter(|slot| rule.keeps_state(slot));
                self.precisions[window.group].bytes_per_step(window.len(), kept)
            })
            .sum();
        reduction + update
    }

    /// Records step `steps + 1` into `encoder`; on error nothing was recorded or changed.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        reduction: Reduction,
    ) -> Result<()> {
        if let Some(step) = self.submissions.dropped() {
            return Err(Error::DroppedStep { step });
        }
        let marker = self.submissions.marker(&self.context)?;
        self.host = self.record(encoder, pairs, None, reduction)?;
        self.steps += 1;
        self.submissions
            .record(encoder, marker, Work::Step(self.steps));
        Ok(())
    }

    /// Records and submits one step, with `timestamps` written around its pass (for the
    /// benchmark); returns once it is queued.
    pub fn step(
        &mut self,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
        reduction: Reduction,
    ) -> Result<()> {
        // Submitted now, the step would run ahead of one recorded earlier.
        let operation = "stepping with a submission of its own";
        self.submissions
            .check(&self.context, Ahead::Write, operation)?;
        let context = self.context.clone();
        let mut encoder = context.device().create_command_encoder(&Default::default());
        let host = self.record(&mut encoder, pairs, timestamps, reduction)?;
        context.scoped("submitting an optimizer step", || {
            context.queue().submit([encoder.finish()]);
        })?;
        self.host = host;
        self.steps += 1;
        Ok(())
    }

    /// Names a caller buffer in errors: `params`, or `params[3]` in a list of pairs.
    fn buffer_name(&self, target: usize, which: &str) -> String {
        match self.lens.len() {
            1 => which.to_owned(),
            _ => format!("{which}[{target}]"),
        }
    }

    /// Checks every pair for what wgpu would otherwise report only when the caller's encoder
    /// finishes, or never: missing usage, sizes, and buffers bound twice in one dispatch.
    // wgpu::Buffer hashes by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    fn check_pairs(&self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)]) -> Result<()> {
        let mut owners: HashMap<&wgpu::Buffer, String> = HashMap::new();
        for (_, buffer) in self.owned.iter().flatten() {
            owners.insert(buffer, "optimizer's own state".to_owned());
        }
        for (target, (&(params, grads), &len)) in pairs.iter().zip(&self.lens).enumerate() {
            let (params_dtype, grads_dtype) = self.dtypes[target];
            let mut sizes = [0; 2];
            for (size, (buffer, which)) in
                sizes.iter_mut().zip([(params, "params"), (grads, "grads")])
            {
                let name = self.buffer_name(target, which);
                if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                    return Err(Error::MissingUsage {
                        buffer: name,
                        usage: "STORAGE",
                    });
                }
                if let Some(owner) = owners.insert(buffer, name.clone()) {
                    return Err(Error::AliasedBuffers {
                        first: owner,
                        second: name,
                    });
                }
                *size = buffer.size();
            }
            // Buffers in a 16-bit format: each must be exactly its length in that format.
            if (params_dtype, grads_dtype) != (Dtype::F32, Dtype::F32) {
                for (bytes, dtype, which) in [
                    (sizes[0], params_dtype, "params"),
                    (sizes[1], grads_dtype, "grads"),
                ] {
                    let expected = dtype.buffer_bytes(len);
                    if bytes != expected {
                        return Err(Error::FormatSize {
                            buffer: self.buffer_name(target, which),
                            format: dtype.name(),
                            len,
                            expected,
                            got: bytes,
                        });
                    }
                }
                continue;
            }
            for (bytes, which) in [(sizes[0], "params"), (sizes[1], "grads")] {
                if !bytes.is_multiple_of(4) {
                    return Err(Error::NotF32Sized {
                        buffer: self.buffer_name(target, which),
                        bytes,
                    });
                }
            }
            let sizes = sizes.map(|bytes| bytes / 4);
            let tensor = self.buffer_name(target, "params");
            let [params_len, grads_len] = sizes;
            if params_len != grads_len {
                return Err(Error::LengthMismatch {
                    tensor,
                    params: params_len,
                    grads: grads_len,
                });
            }
            if params_len != len {
                return Err(Error::StateMismatch {
                    tensor,
                    expected: len,
                    got: params_len,
                });
            }
        }
        Ok(())
    }

    /// Binds the dispatches of every target whose pair changed, caching the new bind groups
    /// only once wgpu has accepted all of them.
    fn bind(&mut self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)], stale: &[usize]) -> Result<()> {
        let guard = self.guard.as_ref().map(|g| &g.device);
        let created = self.context.scoped("binding the step's buffers", || {
            self.dispatches
                .iter()
                .enumerate()
                .filter(|(_, d)| stale.contains(&self.windows[d.window].target))
                .map(|(index, d)| {
                    let window = &self.windows[d.window];
                    let (params, grads) = pairs[window.target];
                    let formats = &self.formats[window.group];
                    let count = d.binding_elements();
                    let storage = roles(formats).into_iter().map(|role| {
                        let (buffer, first) = match role {
                            Role::Params => (params, window.origin + window.offset),
                            Role::Grads => (grads, window.origin + window.offset),
                            Role::GuardResolved => {
                                return (role, guard.expect("guarded").resolved_binding())
                            }
                            Role::GuardScalars => {
                                let guard = guard.expect("guarded");
                                return (role, guard.scalars_binding(window.group));
                            }
                            _ => (
                                self.owned_buffer(window.span, role).expect("allocated"),
                                window.offset,
                            ),
                        };
                        let storage = storage_of(role, formats, self.dtypes[window.target]);
                        let (offset, size) = storage.range(first, count);
                        (
                            role,
                            wgpu::BufferBinding {
                                buffer,
                                offset,
                                size,
                            },
                        )
                    });
                    let group = self.kernels[index].bind_group(
                        self.context.device(),
                        self.groups[window.group].name(),
                        self.values.binding(),
                        storage,
                    );
                    (index, group)
                })
                .collect::<Vec<_>>()
        });
        let created = match created {
            Ok(created) => created,
            Err(error) => return Err(self.foreign_buffer(pairs, stale).unwrap_or(error)),
        };
        for (index, group) in created {
            self.bind_groups[index] = Some(group);
        }
        for &target in stale {
            let (params, grads) = pairs[target];
            self.bound[target] = Some((params.clone(), grads.clone()));
        }
        Ok(())
    }

    /// After binding failed: names the first caller buffer of `stale` targets that belongs to
    /// another device, if one does.
    fn foreign_buffer(
        &self,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        stale: &[usize],
    ) -> Option<Error> {
        stale.iter().find_map(|&target| {
            let (params, grads) = pairs[target];
            [(params, "params"), (grads, "grads")]
                .into_iter()
                .find(|(buffer, _)| !self.context.owns(buffer))
                .map(|(_, which)| Error::ForeignBuffer {
                    buffer: self.buffer_name(target, which),
                })
        })
    }

    /// The targets whose (params, grads) pair differs from the one bound, each new pair
    /// checked; one pair per target.
    fn stale_targets(&self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)]) -> Result<Vec<usize>> {
        if pairs.len() != self.lens.len() {
            return Err(Error::PairCount {
                expected: self.lens.len(),
                got: pairs.len(),
            });
        }
        let stale: Vec<usize> = (0..pairs.len())
            .filter(|&target| {
                let (params, grads) = pairs[target];
                !matches!(&self.bound[target], Some((p, g)) if p == params && g == grads)
            })
            .collect();
        if !stale.is_empty() {
            self.check_pairs(pairs)?;
        }
        Ok(stale)
    }

    /// Binds the guard's reduction (if any) to the grads of `pairs` where `stale` or unbound.
    fn bind_reduction(
        &mut self,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        stale: &[usize],
    ) -> Result<()> {
        let Some(guarded) = &mut self.guard else {
            return Ok(());
        };
        if !stale.is_empty() || guarded.device.needs_binding() {
            let grads: Vec<&wgpu::Buffer> = pairs.iter().map(|pair| pair.1).collect();
            let dtypes = grads_formats(&self.dtypes);
            self.context
                .scoped("binding the grad guard's reduction", || {
                    guarded.device.bind(&grads, &dtypes, stale)
                })?;
        }
        Ok(())
    }

    /// Prepares step `steps + 1`'s guard values: each group's scalars for every step count
    /// the device may hold; with `gathered`, for a finalize over that many gathered partials.
    fn stage_guard(&mut self, gathered: Option<u32>) -> Result<Staged> {
        if self.steps >= u32::MAX as u64 {
            return Err(Error::InvalidGuard {
                reason: "the device counts a guarded optimizer's steps in 32 bits, and this \
                         would be step 2^32"
                    .to_owned(),
            });
        }
        let guarded = self.guard.as_mut().expect("a guard to stage");
        let (lo, rows) = guarded.device.candidates(self.steps);
        // Every group's host state after each count the device may hold, and one more:
        // the scalars of step `count + 1` take the state advanced to it.
        let history = &mut guarded.history;
        while history.base < lo && history.states.len() > 1 {
            history.states.pop_front();
            history.base += 1;
        }
        while history.base + (history.states.len() as u64) <= lo + rows {
            let applied = history.base + history.states.len() as u64;
            let mut next = history.states.back().expect("never empty").clone();
            for (rule, host) in self.groups.iter().zip(&mut next) {
                rule.advance_host_state(applied, host);
            }
            history.states.push_back(next);
        }
        let mut scalars = Vec::new();
        for count in lo..lo + rows {
            let states = history.after(count + 1).expect("staged above");
            for (rule, state) in self.groups.iter().zip(states) {
                scalars.extend_from_slice(bytemuck::bytes_of(&rule.scalars(count + 1, state)));
            }
        }
        guarded
            .device
            .stage((lo, rows), self.groups.len(), &scalars, gathered)
    }

    /// A split guard's first half, for a shard: records the reduction of the grads of
    /// `pairs` under the current scale and settings, merged into one partial, and its copy
    /// into `out` at byte `offset` (16 bytes, a [`GradPartial`](crate::GradPartial)). Counts
    /// no step and changes no state. The caller gathers every shard's partial, in rank order,
    /// into one buffer for [`Reduction::Gathered`].
    pub fn record_grad_partial(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        (out, offset): (&wgpu::Buffer, u64),
    ) -> Result<()> {
        self.context.ensure_alive()?;
        if self.guard.is_none() {
            return Err(Error::InvalidGuard {
                reason: "a grad partial needs a grad guard: set one first".into(),
            });
        }
        let size = std::mem::size_of::<crate::GradPartial>() as u64;
        if !out.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(Error::MissingUsage {
                buffer: "partial".into(),
                usage: "COPY_DST",
            });
        }
        if !offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT) || offset + size > out.size() {
            return Err(Error::InvalidGuard {
                reason: format!(
                    "a partial is {size} bytes at a multiple of 4: offset {offset} in a buffer \
                     of {} bytes",
                    out.size()
                ),
            });
        }
        // Steps in `encoder` precede the reduction, which reads the scale they leave.
        let within = Ahead::Recorded(encoder_id(encoder));
        self.submissions.check(
            &self.context,
            within,
            "recording a grad partial into another encoder",
        )?;
        let stale = self.stale_targets(pairs)?;
        let staged = self.stage_guard(None)?;
        if !stale.is_empty() {
            self.bind(pairs, &stale)?;
        }
        self.bind_reduction(pairs, &stale)?;
        let guarded = self.guard.as_mut().expect("checked above");
        guarded.device.record_stage(encoder, staged);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim grad partial"),
            timestamp_writes: None,
        });
        let grads = grads_formats(&self.dtypes);
        let wide = self.workgroups_per_dimension;
        guarded
            .device
            .record_reduction(&mut pass, &grads, wide, Then::Combine);
        drop(pass);
        guarded.device.record_partial_copy(encoder, out, offset);
        Ok(())
    }

    /// Checks and binds the buffers, stages step `steps + 1`'s values and records the
    /// dispatches as one compute pass, with `timestamps` written around it, without counting
    /// the step: returns each group's host state advanced to that step, for the caller to keep
    /// once the step is certain. Everything that can fail happens before the pass is recorded:
    /// wgpu reports errors inside a pass only when the encoder finishes, outside our scopes.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
        reduction: Reduction,
    ) -> Result<Vec<Vec<f64>>> {
        // A lost device silently drops the work, and cached bind groups mean no wgpu call of
        // ours would notice.
        self.context.ensure_alive()?;
        self.check_reduction(reduction)?;
        let stale = self.stale_targets(pairs)?;
        let t = self.steps + 1;
        let mut host = self.host.clone();
        for (rule, host) in self.groups.iter().zip(&mut host) {
            rule.advance_host_state(t, host);
        }
        let guarded = self.stage_guarded_step(reduction)?;
        self.bind_step(pairs, &stale, reduction)?;
        let step = self.values_of_step(t, &host);
        self.values.stage(&self.context, encoder, &step)?;
        let readback = guarded.map(|(staged, readback)| {
            let guard = &self.guard.as_ref().expect("staged above").device;
            guard.record_stage(encoder, staged);
            readback
        });
        let timestamps = self.record_guard_pass(encoder, reduction, timestamps);
        self.record_update_pass(encoder, &step, timestamps);
        if let (Some(guarded), Some(slot)) = (&mut self.guard, readback) {
            guarded.device.record_readback(encoder, slot, t);
        }
        Ok(host)
    }

    /// Refuses a step's `reduction` where it cannot be: a shard's own reduction under a guard
    /// (every shard's grads decide the step), or gathered partials without a guard or in a
    /// buffer that cannot hold them.
    fn check_reduction(&self, reduction: Reduction) -> Result<()> {
        match (&self.guard, reduction) {
            (Some(_), Reduction::Own) if self.shard.is_some() => self.whole(
                "a guarded step over the shard's grads alone",
                "record_grad_partial, gather every shard's partial, then \
                 record_step_with_partials",
            ),
            (None, Reduction::Gathered(..)) => Err(Error::InvalidGuard {
                reason: "a step with gathered partials needs a grad guard".into(),
            }),
            (_, Reduction::Gathered(gathered, count)) => check_gathered(gathered, count),
            _ => Ok(()),
        }
    }

    /// With a guard, stages step `steps + 1`'s guard values (for a finalize over the
    /// partials `reduction` gathers, where it does) and takes a buffer for the readback of
    /// its status; `None` without a guard.
    fn stage_guarded_step(
        &mut self,
        reduction: Reduction,
    ) -> Result<Option<(Staged, wgpu::Buffer)>> {
        if self.guard.is_none() {
            return Ok(None);
        }
        let gathered = match reduction {
            Reduction::Own => None,
            Reduction::Gathered(_, count) => Some(count),
        };
        let staged = self.stage_guard(gathered)?;
        let guarded = self.guard.as_ref().expect("checked above");
        let readback = guarded.device.readback_slot()?;
        Ok(Some((staged, readback)))
    }

    /// Binds what the step reads: the dispatches of the `stale` targets of `pairs`, the
    /// partials `reduction` gathers (if it does) and the guard's reduction.
    fn bind_step(
        &mut self,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        stale: &[usize],
        reduction: Reduction,
    ) -> Result<()> {
        if !stale.is_empty() {
            self.bind(pairs, stale)?;
        }
        if let (Some(guarded), Reduction::Gathered(gathered, _)) = (&mut self.guard, reduction) {
            self.context
                .scoped("binding the gathered grad partials", || {
                    guarded.device.bind_gathered(gathered)
                })?;
        }
        self.bind_reduction(pairs, stale)
    }

    /// The bytes of step `t`'s values, each dispatch's in its slot: its window's place and its
    /// group's scalars, from the group's host state `host` advanced to step `t`.
    fn values_of_step(&self, t: u64, host: &[Vec<f64>]) -> Vec<u8> {
        let scalars: Vec<R::Scalars> = self
            .groups
            .iter()
            .zip(host)
            .map(|(rule, host)| rule.scalars(t, host))
            .collect();
        self.values.layout(self.dispatches.iter().map(|d| {
            let window = &self.windows[d.window];
            let values = DispatchValues {
                begin: d.begin,
                end: d.end,
                origin: self.spans[window.span].first + window.offset,
                step: t,
                group: window.group,
            };
            step_values(&self.groups[window.group], &scalars[window.group], &values)
        }))
    }

    /// With a guard, records the pass of its reduction and combine (or of the finalize over
    /// the partials `reduction` gathers), whose resolved values are copied into the uniform
    /// the update pass reads. `timestamps`, if any, open the first pass and close the last:
    /// returns those left for the update pass.
    fn record_guard_pass<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        reduction: Reduction,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'a>>,
    ) -> Option<wgpu::ComputePassTimestampWrites<'a>> {
        let Some(guarded) = &self.guard else {
            return timestamps;
        };
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim grad guard"),
            timestamp_writes: timestamps
                .as_ref()
                .map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: t.query_set,
                    beginning_of_pass_write_index: t.beginning_of_pass_write_index,
                    end_of_pass_write_index: None,
                }),
        });
        match reduction {
            Reduction::Own => {
                let grads = grads_formats(&self.dtypes);
                let wide = self.workgroups_per_dimension;
                guarded
                    .device
                    .record_reduction(&mut pass, &grads, wide, Then::Finalize);
            }
            Reduction::Gathered(..) => guarded.device.record_gathered_finalize(&mut pass),
        }
        drop(pass);
        guarded.device.record_resolved_copy(encoder);
        timestamps.map(|t| wgpu::ComputePassTimestampWrites {
            query_set: t.query_set,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: t.end_of_pass_write_index,
        })
    }

    /// Records the update pass: every dispatch's kernel, bind group and slot of the `step`'s
    /// values, with `timestamps` written around it.
    fn record_update_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        step: &[u8],
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.groups[0].name()),
            timestamp_writes: timestamps,
        });
        for (index, d) in self.dispatches.iter().enumerate() {
            let group = self.bind_groups[index]
                .as_ref()
                .expect("every dispatch is bound above");
            let kernel = &self.kernels[index];
            pass.set_pipeline(&kernel.pipeline);
            self.values.set(&mut pass, index, group, step);
            let invocations = d.len().div_ceil(kernel.items);
            let (x, y) = dispatch_grid(invocations, self.workgroups_per_dimension);
            pass.dispatch_workgroups(x, y, 1);
        }
    }
}

/// Each of `targets` targets' (params, grads) formats: those of the groups whose `spans`
/// update it, which must agree (f32 for a target no span updates).
pub(crate) fn target_dtypes(
    targets: usize,
    spans: &[Span],
    precisions: &[Precision],
) -> Result<Vec<(Dtype, Dtype)>> {
    // The first group seen updating each target, and its formats.
    let mut dtypes: Vec<Option<(usize, Dtype, Dtype)>> = vec![None; targets];
    for span in spans {
        let precision = &precisions[span.group];
        match dtypes[span.target] {
            None => dtypes[span.target] = Some((span.group, precision.params, precision.grads)),
            Some((first, params, grads)) => {
                for (buffer, mine, theirs) in [
                    ("params", params, precision.params),
                    ("grads", grads, precision.grads),
                ] {
                    if mine != theirs {
                        return Err(Error::FormatMismatch {
                            buffer,
                            first,
                            first_format: mine.name(),
                            second: span.group,
                            second_format: theirs.name(),
                        });
                    }
                }
            }
        }
    }
    Ok(dtypes
        .into_iter()
        .map(|d| d.map_or((Dtype::F32, Dtype::F32), |(_, p, g)| (p, g)))
        .collect())
}

/// Refuses targets of `lens` elements whose f32 buffers (params, grads, each state) would
/// exceed the adapter's `max_buffer_size`.
fn check_target_sizes(context: &GpuContext, lens: &[u64]) -> Result<()> {
    let limit = context.limits().max_buffer_size;
    match lens
        .iter()
        .map(|len| len.saturating_mul(4))
        .find(|&bytes| bytes > limit)
    {
        Some(bytes) => Err(Error::BufferTooLarge {
            what: "a tensor of this length (its params, grads and each state buffer)",
            bytes,
            limit,
        }),
        None => Ok(()),
    }
}

/// `spans` cut into windows the context's dispatch and binding limits allow, each starting
/// where its group's formats can bind it.
fn plan_windows(context: &GpuContext, spans: &[Span], formats: &[KernelFormats]) -> Vec<Window> {
    let alignment = context.limits().min_storage_buffer_offset_alignment as u64;
    windows(
        spans,
        context.dispatch_limits().window_elements,
        context.binding_elements(),
        |span| Grain {
            alignment: formats[span.group].alignment_elements(alignment),
            quantum: formats[span.group].quantum(),
        },
    )
}

/// Each dispatch's kernel: its window's group's rule in that group's `formats`, compiled or
/// taken from the context's cache.
fn build_kernels<R: StepKernel>(
    context: &GpuContext,
    groups: &[R],
    formats: &[KernelFormats],
    windows: &[Window],
    dispatches: &[Dispatch],
) -> Result<Vec<Arc<Kernel>>> {
    let values = context.step_values_for(values_size::<R>());
    dispatches
        .iter()
        .map(|d| {
            let group = windows[d.window].group;
            let (rule, formats) = (&groups[group], &formats[group]);
            let key = KernelKey::of(rule, d.lanes, values, formats);
            context.kernel(key, || {
                Kernel::build(context.device(), rule, d.lanes, values, formats)
            })
        })
        .collect()
}

/// The buffers a span of `len` elements keeps for `rule` in `formats`, holding their
/// [`initial_contents`].
fn span_buffers<R: StepKernel>(
    context: &GpuContext,
    rule: &R,
    formats: &KernelFormats,
    len: u64,
) -> Vec<(Role, wgpu::Buffer)> {
    initial_contents(rule, formats, len)
        .into_iter()
        .map(|(role, contents)| {
            let buffer = context.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("fused-optim {role:?}")),
                size: contents.len() as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if contents.iter().any(|&byte| byte != 0) {
                context.queue().write_buffer(&buffer, 0, &contents);
            }
            (role, buffer)
        })
        .collect()
}

/// The contents, whole buffers' worth, of what a span of `len` elements keeps for `rule` in
/// `formats` before its first step: its master, where it has one, and each kept slot's values
/// (and scales, for 8-bit blocks), each slot at the rule's initial value (zero except
/// Adagrad's `initial_accumulator_value`). A master starts as zeros: on the first step the
/// kernel takes it from the params (an f32 master) or reads a zero remainder or correction,
/// which stands
/// for the bf16 param exactly.
pub(crate) fn initial_contents<R: StepKernel>(
    rule: &R,
    formats: &KernelFormats,
    len: u64,
) -> Vec<(Role, Vec<u8>)> {
    let zeros = |bytes: u64| vec![0u8; bytes as usize];
    let mut contents = Vec::new();
    match formats.master {
        Master::None => {}
        Master::F32 => contents.push((Role::Master, zeros(4 * len))),
        Master::Bf16Remainder => {
            contents.push((Role::Master, zeros(Dtype::Bf16.buffer_bytes(len))))
        }
        Master::Bf16Correction => contents.push((Role::Master, zeros(len.div_ceil(4) * 4))),
    }
    for (slot, (name, format)) in R::STATE_SLOTS.iter().zip(&formats.slots).enumerate() {
        let Some(format) = *format else { continue };
        let initial = rule.initial_state(name);
        let (mut values, scales) = match initial {
            0.0 => (Vec::new(), Vec::new()),
            _ => {
                let non_negative = R::NON_NEGATIVE.contains(name);
                format.encode(&vec![initial; len as usize], non_negative, slot as u32, 0)
            }
        };
        values.resize(format.value_bytes(len) as usize, 0);
        contents.push((Role::Slot(slot), values));
        if format.blocks().is_some() {
            let mut scales = scales;
            scales.resize(format.scale_bytes(len) as usize, 0);
            contents.push((Role::Scales(slot), scales));
        }
    }
    contents
}

/// A zeroed f32 buffer of `len` elements, with each span's non-zero initial value queued into
/// it: the unfused chain's state.
#[cfg(feature = "baselines")]
pub(crate) fn state_buffer(
    context: &GpuContext,
    name: &str,
    len: u64,
    initial: impl Fn(&Span) -> f32,
    spans: &[&Span],
) -> wgpu::Buffer {
    let buffer = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: len * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for span in spans {
        let value = initial(span);
        if value != 0.0 {
            let values = vec![value; (span.end - span.start) as usize];
            context
                .queue()
                .write_buffer(&buffer, span.start * 4, bytemuck::cast_slice(&values));
        }
    }
    buffer
}
