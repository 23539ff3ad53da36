//! Optimizers over many tensors: [`ParamSet`] steps a packed [`ParamLayout`] with parameter
//! groups, and [`ForeachOptimizer`] steps a list of separate caller buffers (PyTorch's foreach
//! list). Both share the engine of [`Optimizer`](crate::Optimizer).

use super::engine_accessors;
use std::ops::Range;

use super::layout::ParamLayout;
use super::TensorRef;
use crate::error::{Error, Result};
use crate::format::{Dtype, Precision};
use crate::gpu::{Engine, GpuContext, NamedTensor, Reduction, Role, Span};
use crate::rule::{find_state, try_set_lr, StateRef, UpdateRule};

/// Tensors that share hyperparameters, like one entry of PyTorch's `param_groups`: its own
/// `lr`, `weight_decay`, betas, flags, ... as a whole rule of the optimizer's kind.
#[derive(Clone, Debug)]
pub struct ParamGroup<R> {
    /// The group's hyperparameters.
    pub rule: R,
    /// Names of the tensors in the group.
    pub tensors: Vec<String>,
    /// How the group's params, grads, master and state are stored. Groups sharing packed
    /// buffers must agree on the params' and grads' formats; master and state are the
    /// group's own (e.g. f32 state for small tensors, 8-bit for large ones).
    pub precision: Precision,
}

impl<R> ParamGroup<R> {
    /// A group of the named tensors with `rule`'s hyperparameters, in f32.
    pub fn new(rule: R, tensors: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            rule,
            tensors: tensors.into_iter().map(Into::into).collect(),
            precision: Precision::default(),
        }
    }

    /// The group stored as `precision` says.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
}

impl<R: UpdateRule + Default> ParamGroup<R> {
    /// One entry of a PyTorch optimizer's `state_dict()["param_groups"]`, as JSON, as a group:
    /// its rule as [`UpdateRule::from_param_group`] builds it, and its tensors the entry's
    /// `params` indices named by `names`, every parameter's name in the optimizer's order
    /// (`[n for n, _ in model.named_parameters()]` for `torch.optim.X(model.parameters())`).
    pub fn from_param_group(group: &serde_json::Value, names: &[impl AsRef<str>]) -> Result<Self> {
        let rule = R::from_param_group(group)?;
        let indices = group
            .get("params")
            .and_then(|p| p.as_array())
            .ok_or_else(|| Error::HyperparameterKind {
                name: "params".to_owned(),
                expected: "a list of parameter indices",
                got: "something else",
            })?;
        let tensors = indices
            .iter()
            .map(|index| {
                let index = index.as_u64().ok_or_else(|| Error::HyperparameterKind {
                    name: "params".to_owned(),
                    expected: "a list of parameter indices",
                    got: "a list holding something else",
                })?;
                let name = usize::try_from(index).ok().and_then(|i| names.get(i));
                name.map(|n| n.as_ref().to_owned())
                    .ok_or(Error::ParamIndex {
                        index,
                        count: names.len(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(rule, tensors))
    }
}

/// The packed params and grads buffers [`ParamSet::from_tensors`] makes (`STORAGE |
/// COPY_SRC | COPY_DST`): bind each tensor's slice with
/// [`TensorSlot::binding_as`](crate::TensorSlot::binding_as), and step them with the set.
#[derive(Debug)]
pub struct PackedBuffers {
    /// Every tensor's params, at its slot of the layout.
    pub params: wgpu::Buffer,
    /// Every tensor's grads, at its slot of the layout.
    pub grads: wgpu::Buffer,
}

/// A fused optimizer over a parameter set: many named tensors packed into one params and one
/// grads buffer (see [`ParamLayout`]), in parameter groups with their own hyperparameters.
/// A step is one dispatch per group and binding window, however many tensors there are.
///
/// [`ParamSet::shard`] builds one over a contiguous range of the packed elements only, as a
/// data-parallel rank of DeepSpeed's ZeRO or FSDP keeps: its master and state cover the range
/// alone, and a step updates the range alone, element for element as the whole set would.
pub struct ParamSet<R: UpdateRule> {
    engine: Engine<R>,
    layout: ParamLayout,
    /// The packed elements it steps: the whole layout, or a shard of it.
    range: Range<u64>,
    /// Each group's span, where the range holds part of the group.
    spans: Vec<Option<usize>>,
}

impl<R: UpdateRule> ParamSet<R> {
    /// Packs `tensors` (name, element count) into `groups` and allocates the state. Every
    /// tensor must be in exactly one group. Nothing is allocated if the layout or a rule is
    /// invalid or a state buffer would exceed the adapter's `max_buffer_size`.
    pub fn new<T: AsRef<str>>(
        context: &GpuContext,
        tensors: &[(T, usize)],
        groups: Vec<ParamGroup<R>>,
    ) -> Result<Self> {
        Self::build(context, tensors, groups, None)
    }

    /// Packs separate tensors for the caller: `tensors` are (name, params, grads) buffers, a
    /// tensor's elements being its params buffer's bytes over the groups' params format's
    /// element size (4 for f32, 2 for 16-bit), its grads buffer the same elements in the
    /// grads format. Builds the set as [`ParamSet::new`] does and packed buffers of its
    /// layout, and copies every tensor's params and grads into them (submitted before this
    /// returns, so the caller's buffers may be dropped or rebound to the packed ones'
    /// slices). Source buffers need `COPY_SRC`; on error nothing was copied.
    pub fn from_tensors(
        context: &GpuContext,
        tensors: &[(&str, &wgpu::Buffer, &wgpu::Buffer)],
        groups: Vec<ParamGroup<R>>,
    ) -> Result<(Self, PackedBuffers)> {
        let precision = groups
            .first()
            .map(|g| g.precision.clone())
            .unwrap_or_default();
        let (params_dtype, grads_dtype) = (precision.params, precision.grads);
        let mut lens = Vec::with_capacity(tensors.len());
        for &(name, params, grads) in tensors {
            for (buffer, which) in [(params, "params"), (grads, "grads")] {
                if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                    return Err(Error::MissingUsage {
                        buffer: format!("{which} of {name}"),
                        usage: "COPY_SRC",
                    });
                }
                if buffer.size() % 4 != 0 {
                    return Err(Error::NotF32Sized {
                        buffer: format!("{which} of {name}"),
                        bytes: buffer.size(),
                    });
                }
            }
            let len = params.size() / params_dtype.element_bytes();
            if grads.size() != grads_dtype.buffer_bytes(len) {
                return Err(Error::LengthMismatch {
                    tensor: name.to_owned(),
                    params: len,
                    grads: grads.size() / grads_dtype.element_bytes(),
                });
            }
            lens.push((name, len as usize));
        }
        let set = Self::new(context, &lens, groups)?;
        // Whole u32 words in either format.
        let words = |dtype: Dtype| dtype.buffer_bytes(set.layout.len()) / 4;
        let buffers = PackedBuffers {
            params: context.zeros("fused-optim packed params", words(params_dtype))?,
            grads: context.zeros("fused-optim packed grads", words(grads_dtype))?,
        };
        let mut encoder = context.device().create_command_encoder(&Default::default());
        for &(name, params, grads) in tensors {
            let slot = set.layout.tensor(name)?;
            for (source, target, dtype) in [
                (params, &buffers.params, params_dtype),
                (grads, &buffers.grads, grads_dtype),
            ] {
                let offset = slot.offset * dtype.element_bytes();
                encoder.copy_buffer_to_buffer(source, 0, target, offset, source.size());
            }
        }
        context.queue().submit([encoder.finish()]);
        Ok((set, buffers))
    }

    /// A parameter set as a PyTorch optimizer over `tensors` (name, element count, in the
    /// optimizer's parameter order) with `param_groups`, its `state_dict()["param_groups"]`
    /// as JSON: each entry a group (see [`ParamGroup::from_param_group`]), in f32.
    pub fn from_param_groups<T: AsRef<str>>(
        context: &GpuContext,
        tensors: &[(T, usize)],
        param_groups: &serde_json::Value,
    ) -> Result<Self>
    where
        R: Default,
    {
        let entries = param_groups
            .as_array()
            .ok_or_else(|| Error::HyperparameterKind {
                name: "param_groups".to_owned(),
                expected: "a list of groups",
                got: "something else",
            })?;
        let names: Vec<&str> = tensors.iter().map(|(name, _)| name.as_ref()).collect();
        let groups = entries
            .iter()
            .map(|group| ParamGroup::from_param_group(group, &names))
            .collect::<Result<Vec<_>>>()?;
        Self::new(context, tensors, groups)
    }

    /// [`ParamSet::new`] over the packed elements `range` only: one of
    /// [`ParamLayout::shards`], or any range whose ends are multiples of
    /// [`TENSOR_ALIGNMENT`](crate::TENSOR_ALIGNMENT) (or the layout's end). It cuts tensors
    /// anywhere; each tensor and group keeps its settings (its group's precision and rule)
    /// whichever shards hold its elements, and a step rounds each element as the whole set
    /// would (stochastic rounding's streams follow the element's place in its group). Steps
    /// take the same packed `params` and `grads` buffers as the whole set's and touch the
    /// range's elements only. Under a grad guard, every shard's grads decide the step: use
    /// [`Self::record_grad_partial`] and [`Self::record_step_with_partials`] (a step over the
    /// shard's grads alone is [`Error::ShardUnsupported`]). Its checkpoint holds its parts of
    /// the tensors; [`Checkpoint::merge`](crate::Checkpoint::merge) joins every shard's into
    /// the whole set's, and a shard restores its parts from a whole set's checkpoint, so a
    /// run resumes with any number of shards.
    pub fn shard<T: AsRef<str>>(
        context: &GpuContext,
        tensors: &[(T, usize)],
        groups: Vec<ParamGroup<R>>,
        range: Range<u64>,
    ) -> Result<Self> {
        Self::build(context, tensors, groups, Some(range))
    }

    fn build<T: AsRef<str>>(
        context: &GpuContext,
        tensors: &[(T, usize)],
        groups: Vec<ParamGroup<R>>,
        shard: Option<Range<u64>>,
    ) -> Result<Self> {
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|group| group.tensors.iter().map(String::as_str).collect())
            .collect();
        let layout = ParamLayout::new(tensors, &names)?;
        let range = match &shard {
            Some(range) => layout.check_shard(range.clone())?,
            None => 0..layout.len(),
        };
        let mut spans = Vec::new();
        let mut span_of = vec![None; layout.group_count()];
        for (group, span) in span_of.iter_mut().enumerate() {
            let run = layout.group_range(group);
            let (start, end) = (run.start.max(range.start), run.end.min(range.end));
            if start < end {
                *span = Some(spans.len());
                spans.push(Span {
                    target: 0,
                    group,
                    start,
                    end,
                    first: start - run.start,
                });
            }
        }
        let precisions = groups.iter().map(|group| group.precision.clone()).collect();
        let rules = groups.into_iter().map(|group| group.rule).collect();
        let mut engine = Engine::new(context, rules, precisions, vec![layout.len()], &spans)?;
        engine.shard = shard.map(|_| range.clone());
        Ok(Self {
            engine,
            layout,
            range,
            spans: span_of,
        })
    }

    /// Where each tensor lives in the packed buffers.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The packed elements it steps: `0..layout().len()`, or its shard.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Checkpoints name each tensor by its name in the layout (`state.fc1.weight.exp_avg`),
    /// as PyTorch's state dict would with the model's parameter names.
    /// On a shard, each tensor it holds part of names that part.
    fn named_tensors(&self) -> Vec<NamedTensor> {
        let spans = self.engine.spans();
        let mut index = vec![0; self.layout.group_count()];
        let mut named = Vec::new();
        for slot in self.layout.tensors() {
            let in_group = index[slot.group];
            index[slot.group] += 1;
            let start = slot.offset.max(self.range.start);
            let end = (slot.offset + slot.len).min(self.range.end);
            let Some(span) = self.spans[slot.group].filter(|_| start < end) else {
                continue;
            };
            named.push(NamedTensor {
                name: slot.name.clone(),
                span,
                offset: start - spans[span].start,
                len: end - start,
                index: in_group,
                skip: start - slot.offset,
                elements: slot.len,
            });
        }
        named
    }

    /// Group `group`'s span, where this set holds part of the group.
    fn span(&self, group: usize) -> Result<usize> {
        match self.spans.get(group) {
            None => Err(Error::UnknownGroup { group }),
            Some(span) => span.ok_or(Error::ShardUnsupported {
                operation: "reading a group outside the shard",
                start: self.range.start,
                end: self.range.end,
                instead: "read it from the shard that holds it",
            }),
        }
    }

    engine_accessors!();

    /// Each group's rule, in the order the groups were given.
    pub fn groups(&self) -> &[R] {
        &self.engine.groups
    }

    /// Sets every group's learning rate from the next step on; a rejected value changes none.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let mut groups = self.engine.groups.clone();
        for rule in &mut groups {
            try_set_lr(rule, lr)?;
        }
        self.engine.groups = groups;
        Ok(())
    }

    /// Sets one group's learning rate from the next step on (what a scheduler does per group).
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let rule = self
            .engine
            .groups
            .get_mut(group)
            .ok_or(Error::UnknownGroup { group })?;
        try_set_lr(rule, lr)
    }

    /// Each group's storage formats, in the order the groups were given.
    pub fn precisions(&self) -> &[Precision] {
        &self.engine.precisions
    }

    /// The GPU buffer of a state of group `group`, in its storage format, laid out like the
    /// group's run of the params within [`Self::range`]: its element `k` is the params'
    /// element `max(layout().group_range(group).start, range().start) + k`.
    pub fn state_buffer(&self, name: &str, group: usize) -> Result<&wgpu::Buffer> {
        let rule = self
            .engine
            .groups
            .get(group)
            .ok_or(Error::UnknownGroup { group })?;
        match find_state(rule, name)? {
            StateRef::Slot(slot) => Ok(self
                .engine
                .owned_buffer(self.span(group)?, Role::Slot(slot))
                .expect("a kept slot has a buffer")),
            StateRef::Step | StateRef::Host(_) => Err(Error::UnknownState {
                name: name.to_owned(),
                available: format!("`{name}` lives on the host: use read_state"),
            }),
        }
    }

    /// Reads one tensor's state (by name, or by index in layout order) back by PyTorch name,
    /// decoded to f32; `step` reads as one element. Fails for a state the tensor's group does
    /// not keep, and on a shard for a tensor it holds only part of. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_state<'a>(&self, name: &str, tensor: impl Into<TensorRef<'a>>) -> Result<Vec<f32>> {
        pollster::block_on(self.read_state_async(name, tensor))
    }

    /// [`Self::read_state`] as a future, for a browser; natively it waits in place, as that does.
    pub async fn read_state_async<'a>(
        &self,
        name: &str,
        tensor: impl Into<TensorRef<'a>>,
    ) -> Result<Vec<f32>> {
        let slot = self.layout.find(tensor.into())?;
        let tensor = slot.name.as_str();
        match find_state(&self.engine.groups[slot.group], name)? {
            StateRef::Slot(index) => {
                let inside =
                    slot.offset >= self.range.start && slot.offset + slot.len <= self.range.end;
                if !inside {
                    return Err(Error::TensorOutsideShard {
                        name: tensor.to_owned(),
                        start: self.range.start,
                        end: self.range.end,
                    });
                }
                let span = self.span(slot.group)?;
                let values = self.engine.read_slot(span, index).await?;
                let start = (slot.offset - self.engine.spans()[span].start) as usize;
                Ok(values[start..start + slot.len as usize].to_vec())
            }
            StateRef::Host(index) => Ok(vec![
                self.engine.applied().await?.1[slot.group][index] as f32,
            ]),
            StateRef::Step => Ok(vec![self.engine.applied().await?.0 as f32]),
        }
    }

    /// Records one step over the packed `params` and `grads` (each `layout().len()` f32) into
    /// the caller's encoder. On error nothing has been recorded. Until it is
    /// submitted, what would run ahead of it is refused, as
    /// [`Optimizer::record_step`](crate::Optimizer::record_step) says.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        self.engine
            .record_step(encoder, &[(params, grads)], Reduction::Own)
    }

    /// Records and submits one step; returns once it is queued.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.engine.step(&[(params, grads)], None, Reduction::Own)
    }

    /// [`Self::step`] with GPU timestamps written at the start and end of its compute pass
    /// (`wgpu::Features::TIMESTAMP_QUERY`), for profiling: the benchmark times steps so.
    pub fn step_timed(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.engine
            .step(&[(params, grads)], timestamps, Reduction::Own)
    }

    /// A split grad guard's first half, for a shard under a guard: records the reduction of
    /// the shard's grads (its range of `grads`) under the current loss scale and settings,
    /// merged into one [`GradPartial`](crate::GradPartial), and its copy into `out` at byte
    /// `offset` (16 bytes; `out` needs `COPY_DST`). Counts no step and changes no state. Gather
    /// every shard's partial in rank order (an all-gather of 16 bytes per rank) into one
    /// `STORAGE` buffer for [`Self::record_step_with_partials`]: every rank then finds the
    /// same norm, skip and scale, bit for bit.
    pub fn record_grad_partial(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        (params, grads): (&wgpu::Buffer, &wgpu::Buffer),
        out: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        self.engine
            .record_grad_partial(encoder, &[(params, grads)], (out, offset))
    }

    /// A split grad guard's second half: records one step whose guard merges the `count`
    /// partials in `gathered` (every shard's, in rank order, from
    /// [`Self::record_grad_partial`]) rather than reducing this shard's grads alone.
    pub fn record_step_with_partials(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        (params, grads): (&wgpu::Buffer, &wgpu::Buffer),
        gathered: &wgpu::Buffer,
        count: u32,
    ) -> Result<()> {
        let reduction = Reduction::Gathered(gathered, count);
        self.engine
            .record_step(encoder, &[(params, grads)], reduction)
    }
}

/// A fused optimizer over a list of separate (params, grads) buffer pairs the caller already
/// owns, like PyTorch's foreach implementation: one dispatch per pair (and window), all in one
/// compute pass, with the bind groups made on the first step and reused while the caller
/// passes the same buffers.
pub struct ForeachOptimizer<R: UpdateRule> {
    engine: Engine<R>,
}

impl<R: UpdateRule> ForeachOptimizer<R> {
    /// State for tensors of `lens` elements, in the order their pairs will be passed.
    pub fn new(context: &GpuContext, rule: R, lens: &[usize]) -> Result<Self> {
        Self::with_precision(context, rule, Precision::default(), lens)
    }

    /// [`ForeachOptimizer::new`] with every pair stored as `precision` says.
    pub fn with_precision(
        context: &GpuContext,
        rule: R,
        precision: Precision,
        lens: &[usize],
    ) -> Result<Self> {
        if lens.is_empty() {
            return Err(Error::EmptyParams);
        }
        let lens: Vec<u64> = lens.iter().map(|&len| len as u64).collect();
        let spans: Vec<Span> = lens
            .iter()
            .enumerate()
            .map(|(target, &len)| Span {
                target,
                group: 0,
                start: 0,
                end: len,
                first: 0,
            })
            .collect();
        let engine = Engine::new(context, vec![rule], vec![precision], lens, &spans)?;
        Ok(Self { engine })
    }

    /// The rule every pair is stepped with.
    pub fn rule(&self) -> &R {
        &self.engine.groups[0]
    }

    engine_accessors!();

    /// Changes the learning rate from the next step on; a rejected value leaves the old one.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.engine.groups[0], lr)
    }

    /// Reads the state of a tensor (by index, or by its checkpoint name, the index as text)
    /// back by PyTorch name. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_state<'a>(&self, name: &str, tensor: impl Into<TensorRef<'a>>) -> Result<Vec<f32>> {
        pollster::block_on(self.read_state_async(name, tensor))
    }

    /// [`Self::read_state`] as a future, for a browser; natively it waits in place, as that does.
    pub async fn read_state_async<'a>(
        &self,
        name: &str,
        tensor: impl Into<TensorRef<'a>>,
    ) -> Result<Vec<f32>> {
        let index = tensor.into().numbered(self.engine.targets())?;
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => self.engine.read_slot(index, slot).await,
            StateRef::Host(slot) => Ok(vec![self.engine.applied().await?.1[0][slot] as f32]),
            StateRef::Step => Ok(vec![self.engine.applied().await?.0 as f32]),
        }
    }

    /// Checkpoints name the `i`th tensor `i`, as PyTorch's state dict names the parameters
    /// of a list.
    fn named_tensors(&self) -> Vec<NamedTensor> {
        self.engine
            .spans()
            .iter()
            .enumerate()
            .map(|(span, s)| NamedTensor::whole(span.to_string(), span, span, 0, s.end - s.start))
            .collect()
    }

    /// Records one step over `pairs`, in the order of the lengths given to `new`, into the
    /// caller's encoder. On error nothing has been recorded. Until it is
    /// submitted, what would run ahead of it is refused, as
    /// [`Optimizer::record_step`](crate::Optimizer::record_step) says.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
    ) -> Result<()> {
        self.engine.record_step(encoder, pairs, Reduction::Own)
    }

    /// Records and submits one step; returns once it is queued.
    pub fn step(&mut self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)]) -> Result<()> {
        self.engine.step(pairs, None, Reduction::Own)
    }
}
