//! The optimizer objects: [`Optimizer`] steps caller-owned GPU buffers in place, and
//! [`CpuOptimizer`] runs the same rule's CPU twin on host slices. Both are generic over the
//! rule and know nothing of any single one.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::{
    bytes_per_step, dispatch_grid, pipeline_flags, twin_element, uniform_binding_size, Kernel,
    KernelKey, StepHeader, UpdateRule, HEADER_BYTES, WORKGROUP_SIZE,
};

/// Steps that may be recorded with [`Optimizer::record_step`] into command buffers not yet
/// submitted. Each recorded step reads its scalars from its own slot of a ring of this many
/// uniform slots; recording more before a submit would overwrite a pending step's scalars.
pub const MAX_PENDING_STEPS: u64 = 64;

/// Where a state name lives: a buffer slot of the rule, or the host-side step count.
enum StateRef {
    Slot(usize),
    Step,
}

fn state_names<R: UpdateRule>(rule: &R) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = R::STATE_SLOTS
        .iter()
        .copied()
        .filter(|name| rule.keeps_state(name))
        .collect();
    if R::COUNTS_STEPS {
        names.push("step");
    }
    names
}

fn find_state<R: UpdateRule>(rule: &R, name: &str) -> Result<StateRef> {
    if R::COUNTS_STEPS && name == "step" {
        return Ok(StateRef::Step);
    }
    R::STATE_SLOTS
        .iter()
        .position(|slot| *slot == name && rule.keeps_state(slot))
        .map(StateRef::Slot)
        .ok_or_else(|| Error::UnknownState {
            name: name.to_owned(),
            available: state_names(rule).join(", "),
        })
}

fn validated<R: UpdateRule>(rule: R, len: usize) -> Result<R> {
    rule.validate()?;
    if len == 0 {
        return Err(Error::EmptyParams);
    }
    Ok(rule)
}

/// Sets the lr only if the rule accepts it, so a rejected value leaves the old one in force.
fn try_set_lr<R: UpdateRule>(rule: &mut R, lr: f64) -> Result<()> {
    let mut candidate = rule.clone();
    candidate.set_lr(lr);
    candidate.validate()?;
    *rule = candidate;
    Ok(())
}

/// A fused optimizer over one tensor of `len` f32 elements on the GPU.
///
/// It owns the state buffers, the step count and the pipeline; params and grads stay the
/// caller's buffers (`STORAGE` usage, exactly `len` f32 each) and are updated in place, one
/// dispatch per step, with no readback and no host wait.
pub struct Optimizer<R: UpdateRule> {
    context: GpuContext,
    rule: R,
    len: u64,
    steps: u64,
    kernel: Arc<Kernel>,
    uniforms: wgpu::Buffer,
    uniform_stride: u64,
    /// One buffer per `R::STATE_SLOTS`; a 16-byte placeholder for slots this configuration
    /// does not keep, since the layout binds every slot the shader declares.
    state: Vec<wgpu::Buffer>,
    binding_limit: u64,
    max_workgroups_per_dim: u32,
    /// The last (params, grads) pair and its bind group, reused while the caller passes the same buffers.
    bound: Option<(wgpu::Buffer, wgpu::Buffer, wgpu::BindGroup)>,
}

impl<R: UpdateRule> Optimizer<R> {
    /// Validates `rule`, compiles (or reuses) its kernel and allocates its state for `len` elements.
    pub fn new(context: &GpuContext, rule: R, len: usize) -> Result<Self> {
        let rule = validated(rule, len)?;
        let limits = context.limits();
        let bytes = len as u64 * 4;
        // Shaders index elements with u32, so no binding may hold more than a u32 index reaches
        // (Metal's binding limit can exceed that).
        let index_limit = (u32::MAX - WORKGROUP_SIZE) as u64 * 4;
        let binding_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(index_limit);
        if bytes > binding_limit {
            return Err(Error::BufferTooLarge {
                what: "the optimizer's state",
                bytes,
                limit: binding_limit,
            });
        }
        let device = context.device();
        let key = KernelKey {
            shader: R::SHADER,
            flags: pipeline_flags(&rule),
        };
        let kernel = context.kernel(key, || Kernel::build(device, &rule))?;
        let uniform_stride = uniform_binding_size::<R>()
            .next_multiple_of(limits.min_uniform_buffer_offset_alignment as u64);
        let (uniforms, state) = context.scoped("allocating optimizer state", || {
            let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim step scalars"),
                size: uniform_stride * MAX_PENDING_STEPS,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let state = R::STATE_SLOTS
                .iter()
                .map(|name| {
                    let kept = rule.keeps_state(name);
                    let count = if kept { len } else { 4 };
                    let init = vec![if kept { rule.initial_state(name) } else { 0.0 }; count];
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(name),
                        contents: bytemuck::cast_slice(&init),
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                    })
                })
                .collect();
            (uniforms, state)
        })?;
        Ok(Self {
            context: context.clone(),
            rule,
            len: len as u64,
            steps: 0,
            kernel,
            uniforms,
            uniform_stride,
            state,
            binding_limit,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            bound: None,
        })
    }

    pub fn rule(&self) -> &R {
        &self.rule
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps taken so far (PyTorch's `state["step"]`).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    pub fn lr(&self) -> f64 {
        self.rule.lr()
    }

    /// Changes the learning rate from the next step on. Only the per-step uniform changes; no
    /// pipeline is rebuilt. A rejected value leaves the old one in force.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// The state this optimizer keeps, by PyTorch name.
    pub fn state_names(&self) -> Vec<&'static str> {
        state_names(&self.rule)
    }

    /// The GPU buffer of a state (`exp_avg`, ...), e.g. to copy it into a checkpoint.
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => Ok(&self.state[slot]),
            StateRef::Step => Err(Error::UnknownState {
                name: name.to_owned(),
                available: "`step` lives on the host: use step_count()".to_owned(),
            }),
        }
    }

    /// Reads a state back to the host by PyTorch name; `step` reads as one element.
    /// Waits for the GPU.
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => self.context.download(&self.state[slot]),
            StateRef::Step => Ok(vec![self.steps as f32]),
        }
    }

    /// Bytes of GPU memory this optimizer allocated (state, placeholders and the uniform ring).
    pub fn state_bytes(&self) -> u64 {
        self.uniforms.size() + self.state.iter().map(wgpu::Buffer::size).sum::<u64>()
    }

    /// Bytes one step must move: params read and written, grads read, and every kept state
    /// buffer read and written. The denominator of effective bandwidth.
    pub fn bytes_per_step(&self) -> u64 {
        bytes_per_step(self.len, self.state_buffer_count())
    }

    /// How many per-element state buffers this configuration keeps.
    pub fn state_buffer_count(&self) -> usize {
        R::STATE_SLOTS
            .iter()
            .filter(|name| self.rule.keeps_state(name))
            .count()
    }

    /// Records one step into the caller's encoder without submitting it. The step's scalars are
    /// queued with `queue.write_buffer`, so they reach the GPU with the caller's next submit;
    /// up to [`MAX_PENDING_STEPS`] steps may be recorded before that submit. On error nothing
    /// has been recorded.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        self.record(encoder, params, grads)?;
        self.steps += 1;
        Ok(())
    }

    /// Records and submits one step. Returns once it is queued; it does not wait for the GPU.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        let context = self.context.clone();
        let mut encoder = context.device().create_command_encoder(&Default::default());
        self.record(&mut encoder, params, grads)?;
        context.scoped("submitting an optimizer step", || {
            context.queue().submit([encoder.finish()]);
        })?;
        self.steps += 1;
        Ok(())
    }

    /// Checks everything wgpu would otherwise only report when the caller's encoder finishes,
    /// or not at all: a lost device silently drops the work, and a cached bind group means no
    /// wgpu call of ours would notice.
    fn check_buffers(&self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.context.ensure_alive()?;
        if params == grads {
            return Err(Error::AliasedBuffers {
                first: "params",
                second: "grads",
            });
        }
        for (buffer, name) in [(params, "params"), (grads, "grads")] {
            if self.state.contains(buffer) {
                return Err(Error::AliasedBuffers {
                    first: name,
                    second: "optimizer's own state",
                });
            }
        }
        let mut lengths = [0; 2];
        for (length, (buffer, name)) in lengths
            .iter_mut()
            .zip([(params, "params"), (grads, "grads")])
        {
            if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::MissingUsage {
                    buffer: name,
                    usage: "STORAGE",
                });
            }
            if !buffer.size().is_multiple_of(4) {
                return Err(Error::NotF32Sized {
                    buffer: name,
                    bytes: buffer.size(),
                });
            }
            if buffer.size() > self.binding_limit {
                return Err(Error::BufferTooLarge {
                    what: name,
                    bytes: buffer.size(),
                    limit: self.binding_limit,
                });
            }
            *length = buffer.size() / 4;
        }
        let [params_len, grads_len] = lengths;
        if params_len != grads_len {
            return Err(Error::LengthMismatch {
                params: params_len,
                grads: grads_len,
            });
        }
        if params_len != self.len {
            return Err(Error::StateMismatch {
                expected: self.len,
                got: params_len,
            });
        }
        Ok(())
    }

    /// Checks the buffers, binds them, queues step `steps + 1`'s scalars into its ring slot and
    /// records the dispatch. Everything that can fail happens before the pass is recorded: wgpu
    /// reports errors inside a pass only when the encoder finishes, outside any scope of ours.
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        self.check_buffers(params, grads)?;
        let bind_group = self.bind_group(params, grads)?;
        let t = self.steps + 1;
        let offset = (self.steps % MAX_PENDING_STEPS) * self.uniform_stride;
        let header = StepHeader::new(&self.rule, self.len);
        let queue = self.context.queue();
        queue.write_buffer(&self.uniforms, offset, bytemuck::bytes_of(&header));
        queue.write_buffer(
            &self.uniforms,
            offset + HEADER_BYTES,
            bytemuck::bytes_of(&self.rule.scalars(t)),
        );
        let (x, y) = dispatch_grid(self.len, self.max_workgroups_per_dim);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.rule.name()),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset as u32]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }

    /// The bind group for these buffers: the cached one while the caller passes the same pair,
    /// else a new one, cached only once wgpu has accepted it.
    fn bind_group(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        if let Some((p, g, group)) = &self.bound {
            if p == params && g == grads {
                return Ok(group.clone());
            }
        }
        let group = self.context.scoped("binding the step's buffers", || {
            self.kernel.bind_group(
                self.context.device(),
                self.rule.name(),
                wgpu::BufferBinding {
                    buffer: &self.uniforms,
                    offset: 0,
                    size: wgpu::BufferSize::new(uniform_binding_size::<R>()),
                },
                params,
                grads,
                &self.state,
            )
        })?;
        self.bound = Some((params.clone(), grads.clone(), group.clone()));
        Ok(group)
    }
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
                true => vec![rule.initial_state(name); len],
                false => Vec::new(),
            })
            .collect();
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

    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    pub fn state_names(&self) -> Vec<&'static str> {
        state_names(&self.rule)
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
                params: params_len,
                grads: grads_len,
            });
        }
        if params_len != self.len as u64 {
            return Err(Error::StateMismatch {
                expected: self.len as u64,
                got: params_len,
            });
        }
        let t = self.steps + 1;
        let header = StepHeader::new(&self.rule, self.len as u64);
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
