//! [`Optimizer`]: the fused step over one caller-owned GPU buffer pair, in place.

use super::engine_accessors;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::format::Precision;
use crate::gpu::{Engine, GpuContext, Role, Span};
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

    /// Reads a state back to the host by PyTorch name, decoded to f32 whatever its format;
    /// `step` reads as one element. Waits for the GPU.
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => self.engine.read_slot(0, slot),
            StateRef::Host(index) => Ok(vec![self.engine.applied()?.1[0][index] as f32]),
            StateRef::Step => Ok(vec![self.engine.applied()?.0 as f32]),
        }
    }

    /// The optimizer's state as a [`Checkpoint`]: named as PyTorch's flattened state dict,
    /// its one tensor as `0` (`state.0.exp_avg`, `state.0.step`, ...), every slot in its
    /// stored format, the master, the grad guard's status, and the hyperparameters, formats
    /// and layout in the metadata. Params are the caller's: save them with the model. Waits
    /// for the GPU.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.engine.checkpoint(&Self::names())
    }

    /// Restores a [`Optimizer::checkpoint`] into this optimizer, which must have the same rule
    /// and flags, length, formats and grad guard (or none): hyperparameters, every state, the
    /// master, step counts and guard status. A mismatch or a corrupt checkpoint is a typed
    /// error naming what is wrong, and changes nothing. Restore before recording more steps:
    /// the state is written at the next submission.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.engine.restore(checkpoint, &Self::names())
    }

    /// [`Optimizer::checkpoint`] written to a safetensors file at `path`, crash-safely (see
    /// [`Checkpoint::save`]).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.checkpoint()?.save(path)
    }

    /// [`Optimizer::restore`] from the safetensors file at `path`.
    pub fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.restore(&Checkpoint::load(path)?)
    }

    fn names() -> Vec<String> {
        vec!["0".to_owned()]
    }

    /// The f32 master weights (reconstructed exactly from the bf16 params and the remainder,
    /// for that master), or `None` without a master. `params` is the buffer the steps update.
    /// Waits for the GPU.
    pub fn read_master(&self, params: &wgpu::Buffer) -> Result<Option<Vec<f32>>> {
        self.engine.read_master(0, params)
    }

    /// How many per-element state buffers this configuration keeps.
    pub fn state_buffer_count(&self) -> usize {
        kept_states(self.rule())
    }

    /// Records one step into the caller's encoder without submitting it. The step's values
    /// (learning rate, bias corrections, ...) travel with the recorded commands (see
    /// [`StepValues`](crate::StepValues)), so any number of steps may be recorded, into one
    /// encoder or several, before a submit, each with its own values. On error nothing has
    /// been recorded.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        self.engine.record_step(encoder, &[(params, grads)])
    }

    /// Records and submits one step. Returns once it is queued; it does not wait for the GPU.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.engine.step(&[(params, grads)], None)
    }

    /// [`Optimizer::step`] with GPU timestamps written at the start and end of its compute
    /// pass (`wgpu::Features::TIMESTAMP_QUERY`), for profiling: the benchmark times steps so.
    pub fn step_timed(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.engine.step(&[(params, grads)], timestamps)
    }
}
