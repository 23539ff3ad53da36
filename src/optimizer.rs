//! The single-tensor optimizers: [`Optimizer`] steps one caller-owned GPU buffer pair in
//! place, and [`CpuOptimizer`] runs the same rule's CPU twin on host slices. Both are generic
//! over the rule and know nothing of any single one.

use crate::context::GpuContext;
use crate::engine::{engine_accessors, find_state, state_names, try_set_lr, Engine, StateRef};
use crate::error::{Error, Result};
use crate::kernel::{kept_states, twin_element, StepHeader, UpdateRule};
use crate::plan::Span;

fn validated<R: UpdateRule>(rule: R, len: usize) -> Result<R> {
    rule.validate()?;
    if len == 0 {
        return Err(Error::EmptyParams);
    }
    Ok(rule)
}

/// A fused optimizer over one tensor of `len` f32 elements on the GPU.
///
/// It owns the state buffers, the step count and the pipeline; params and grads stay the
/// caller's buffers (`STORAGE` usage, exactly `len` f32 each) and are updated in place, with
/// no readback and no host wait: one dispatch per step, or one per window where the tensor is
/// larger than the adapter's storage-binding limit.
pub struct Optimizer<R: UpdateRule> {
    engine: Engine<R>,
    len: u64,
}

impl<R: UpdateRule> Optimizer<R> {
    /// Validates `rule`, compiles (or reuses) its kernel and allocates its state for `len`
    /// elements. Fails before allocating anything if a state buffer would exceed the adapter's
    /// `max_buffer_size`.
    pub fn new(context: &GpuContext, rule: R, len: usize) -> Result<Self> {
        let len = len as u64;
        let span = Span {
            target: 0,
            group: 0,
            start: 0,
            end: len,
        };
        let engine = Engine::new(context, vec![rule], vec![len], &[span])?;
        Ok(Self { engine, len })
    }

    pub fn rule(&self) -> &R {
        &self.engine.groups[0]
    }

    engine_accessors!();

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn lr(&self) -> f64 {
        self.rule().lr()
    }

    /// Changes the learning rate from the next step on. Only the per-step uniform changes; no
    /// pipeline is rebuilt. A rejected value leaves the old one in force.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.engine.groups[0], lr)
    }

    /// The GPU buffer of a state (`exp_avg`, ...), e.g. to copy it into a checkpoint.
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => Ok(self.engine.state_buffer(0, slot)),
            StateRef::Step => Err(Error::UnknownState {
                name: name.to_owned(),
                available: "`step` lives on the host: use step_count()".to_owned(),
            }),
        }
    }

    /// Reads a state back to the host by PyTorch name; `step` reads as one element.
    /// Waits for the GPU.
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        match find_state(self.rule(), name)? {
            StateRef::Slot(slot) => self
                .engine
                .context()
                .download(self.engine.state_buffer(0, slot)),
            StateRef::Step => Ok(vec![self.engine.steps as f32]),
        }
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

    /// [`Optimizer::step`] with `timestamps` written around its pass, for the benchmark.
    pub(crate) fn step_timed(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.engine.step(&[(params, grads)], timestamps)
    }
}

/// A host state vector of `len` copies of `value`, or `HostOutOfMemory` where the allocator
/// refuses (an absurd length), instead of aborting the process.
fn host_state(len: usize, value: f32) -> Result<Vec<f32>> {
    let mut state = Vec::new();
    state
        .try_reserve_exact(len)
        .map_err(|_| Error::HostOutOfMemory {
            bytes: (len as u64).saturating_mul(4),
        })?;
    state.resize(len, value);
    Ok(state)
}

/// The CPU twin of [`Optimizer`]: the same rule, step count and state, on host slices.
#[derive(Clone, Debug)]
pub struct CpuOptimizer<R: UpdateRule> {
    rule: R,
    len: usize,
    steps: u64,
    /// One vector per `R::STATE_SLOTS`, empty for slots this configuration does not keep.
    state: Vec<Vec<f32>>,
}

impl<R: UpdateRule> CpuOptimizer<R> {
    pub fn new(rule: R, len: usize) -> Result<Self> {
        let rule = validated(rule, len)?;
        let state = R::STATE_SLOTS
            .iter()
            .map(|name| match rule.keeps_state(name) {
                true => host_state(len, rule.initial_state(name)),
                false => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            rule,
            len,
            steps: 0,
            state,
        })
    }

    pub fn rule(&self) -> &R {
        &self.rule
    }

    pub fn step_count(&self) -> u64 {
        self.steps
    }

    pub fn state_names(&self) -> Vec<&'static str> {
        state_names(std::slice::from_ref(&self.rule))
    }

    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// A state by PyTorch name; `step` reads as one element.
    pub fn state(&self, name: &str) -> Result<Vec<f32>> {
        Ok(match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => self.state[slot].clone(),
            StateRef::Step => vec![self.steps as f32],
        })
    }

    /// One step of the twin, element by element in the shader's order of operations
    /// (shaders/common.wgsl, then the rule's `update`).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        let (params_len, grads_len) = (params.len() as u64, grads.len() as u64);
        if params_len != grads_len {
            return Err(Error::LengthMismatch {
                tensor: "params".into(),
                params: params_len,
                grads: grads_len,
            });
        }
        if params_len != self.len as u64 {
            return Err(Error::StateMismatch {
                tensor: "params".into(),
                expected: self.len as u64,
                got: params_len,
            });
        }
        let t = self.steps + 1;
        let header = StepHeader::new(&self.rule, 0, self.len as u64);
        let scalars = self.rule.scalars(t);
        let mut values = vec![0.0; self.state.len()];
        for (i, (param, &grad)) in params.iter_mut().zip(grads).enumerate() {
            for (value, slot) in values.iter_mut().zip(&self.state) {
                *value = slot.get(i).copied().unwrap_or(0.0);
            }
            twin_element(&self.rule, &header, &scalars, param, grad, &mut values);
            for (value, slot) in values.iter().zip(&mut self.state) {
                if let Some(stored) = slot.get_mut(i) {
                    *stored = *value;
                }
            }
        }
        self.steps = t;
        Ok(())
    }
}
