//! [`Optimizer`]: the fused step over one caller-owned GPU buffer pair, in place.

use super::{engine_accessors, TensorRef};
use crate::error::{Error, Result};
use crate::format::Precision;
use crate::gpu::{Engine, GpuContext, NamedTensor, Reduction, Role, Span};
use crate::rule::{find_state, kept_states, try_set_lr, StateRef, UpdateRule};

/// A fused optimizer over one tensor of `len` elements on the GPU.
///
/// It owns the state buffers (and master weights), the step count and the pipeline; params and
/// grads stay the caller's buffers (`STORAGE` usage, exactly `len` elements each in the
/// formats of its [`Precision`], f32 by default) and are updated in place, with no readback
/// and no host wait: one dispatch per step, or one per window where the tensor is larger than
/// the adapter's storage-binding limit.
pub struct Optimizer<R: UpdateRule> {
    engine: Engine<R>,
    len: u64,
}

impl<R: UpdateRule> Optimizer<R> {
    /// Validates `rule`, compiles (or reuses) its kernel and allocates its state for `len`
    /// elements. Fails before allocating anything if a state buffer would exceed the adapter's
    /// `max_buffer_size`.
    pub fn new(context: &GpuContext, rule: R, len: usize) -> Result<Self> {
        Self::with_precision(context, rule, Precision::default(), len)
    }

    /// [`Optimizer::new`] with params, grads, master weights and state stored as `precision`
    /// says. With a master, the master is taken from the params on the first step.
    pub fn with_precision(
        context: &GpuContext,
        rule: R,
        precision: Precision,
        len: usize,
    ) -> Result<Self> {
        let len = len as u64;
        let span = Span {
            target: 0,
            group: 0,
            start: 0,
            end: len,
            first: 0,
        };
        let engine = Engine::new(context, vec![rule], vec![precision], vec![len], &[span])?;
        Ok(Self { engine, len })
    }

    /// The rule and its hyperparameters.
    pub fn rule(&self) -> &R {
        &self.engine.groups[0]
    }

    engine_accessors!();

    /// Elements the optimizer updates.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: an optimizer has at least one element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.rule().lr()
    }

    /// Changes the learning rate from the next step on. Only the per-step uniform changes; no
    /// pipeline is rebuilt. A rejected value leaves the old one in force.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.engine.groups[0], lr)
    }

    /// The storage formats of params, grads, master and state.
    pub fn precision(&self) -> &Precision {
        &self.engine.precisions[0]
    }

    /// The GPU buffer of a state (`exp_avg`, ...) in its storage format (the codes, for
    /// 8-bit state), e.g. to copy it into a checkpoint.
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => Ok(self
                .engine
                .owned_buffer(0, Role::Slot(slot))
                .expect("a kept slot has a buffer")),
            StateRef::Step | StateRef::Host(_) => Err(Error::UnknownState {
                name: name.to_owned(),
                available: format!("`{name}` lives on the host: use read_state"),
            }),
        }
    }

    /// Reads a state of its one tensor (`0`, or `"0"` as checkpoints name it) back to the
    /// host by PyTorch name, decoded to f32 whatever its format; `step` reads as one element.
    /// Waits for the GPU.
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
        tensor.into().numbered(1)?;
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => self.engine.read_slot(0, slot).await,
            StateRef::Host(index) => Ok(vec![self.engine.applied().await?.1[0][index] as f32]),
            StateRef::Step => Ok(vec![self.engine.applied().await?.0 as f32]),
        }
    }

    /// The tensor checkpoints name `0`, as PyTorch's state dict names a single parameter.
    fn named_tensors(&self) -> Vec<NamedTensor> {
        vec![NamedTensor::whole("0".to_owned(), 0, 0, 0, self.len)]
    }

    /// The f32 master weights (reconstructed exactly from the bf16 params and the remainder,
    /// for that master), or `None` without a master. `params` is the buffer the steps update.
    /// Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_master(&self, params: &wgpu::Buffer) -> Result<Option<Vec<f32>>> {
        pollster::block_on(self.read_master_async(params))
    }

    /// [`Self::read_master`] as a future, for a browser; natively it waits in place, as that does.
    pub async fn read_master_async(&self, params: &wgpu::Buffer) -> Result<Option<Vec<f32>>> {
        self.engine.read_master(0, params).await
    }

    /// How many per-element state buffers this configuration keeps.
    pub fn state_buffer_count(&self) -> usize {
        kept_states(self.rule())
    }

    /// Records one step into the caller's encoder without submitting it. The step's values
    /// (learning rate, bias corrections, ...) travel with the recorded commands (see
    /// [`StepValues`](crate::StepValues)), so any number of steps may be recorded, into one
    /// encoder or several (submitted in the order recorded), before a submit, each with its
    /// own values. Until it is submitted, what would run ahead of it (a checkpoint of its own
    /// submission, a restore, a state read, [`Optimizer::step`]) is refused with
    /// [`Error::UnsubmittedStep`](crate::Error::UnsubmittedStep). On error nothing has been
    /// recorded.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        self.engine
            .record_step(encoder, &[(params, grads)], Reduction::Own)
    }

    /// Records and submits one step. Returns once it is queued; it does not wait for the GPU.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.engine.step(&[(params, grads)], None, Reduction::Own)
    }

    /// [`Optimizer::step`] with GPU timestamps written at the start and end of its compute
    /// pass (`wgpu::Features::TIMESTAMP_QUERY`), for profiling: the benchmark times steps so.
    pub fn step_timed(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.engine
            .step(&[(params, grads)], timestamps, Reduction::Own)
    }
}
