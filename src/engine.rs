//! The stepping machinery every optimizer kind shares: state allocation, the windows a step is
//! cut into, cached bind groups, the per-step uniform ring and the compute pass. It knows no
//! single rule and no single way of laying out tensors: an optimizer describes its caller's
//! buffer pairs as targets and says which group's rule updates which elements of each.

use std::collections::HashMap;
use std::sync::Arc;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::{
    bytes_per_step, dispatch_grid, kept_states, uniform_binding_size, Kernel, KernelKey,
    StepHeader, UpdateRule, HEADER_BYTES,
};
use crate::plan::{windows, Span, Window};

/// Steps that may be recorded with `record_step` into command buffers not yet submitted. Each
/// recorded step reads its scalars from its own slot of a ring of this many uniform slots;
/// recording more before a submit would overwrite a pending step's scalars.
pub const MAX_PENDING_STEPS: u64 = 64;

/// Where a state name lives: a buffer slot of the rule, or the host-side step count.
pub(crate) enum StateRef {
    Slot(usize),
    Step,
}

/// Every slot of `R::STATE_SLOTS` that one of `groups` keeps, then `step` when the rule counts.
pub(crate) fn state_names<R: UpdateRule>(groups: &[R]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = R::STATE_SLOTS
        .iter()
        .copied()
        .filter(|name| groups.iter().any(|rule| rule.keeps_state(name)))
        .collect();
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
    candidate.set_lr(lr);
    candidate.validate()?;
    *rule = candidate;
    Ok(())
}

/// The accessors every optimizer kind forwards to its `engine` field, written once.
macro_rules! engine_accessors {
    () => {
        /// Steps taken so far (PyTorch's `state["step"]`).
        pub fn step_count(&self) -> u64 {
            self.engine.steps
        }

        /// The states this optimizer keeps, by PyTorch name.
        pub fn state_names(&self) -> Vec<&'static str> {
            crate::engine::state_names(&self.engine.groups)
        }

        /// Bytes of GPU memory this optimizer allocated: its state buffers, a 16-byte
        /// placeholder for state slots no group keeps, and the uniform ring. Params and grads
        /// are the caller's.
        pub fn state_bytes(&self) -> u64 {
            self.engine.state_bytes()
        }

        /// Bytes one step must move: params read and written, grads read, and every kept state
        /// read and written (padding between packed tensors included). The denominator of
        /// effective bandwidth.
        pub fn bytes_per_step(&self) -> u64 {
            self.engine.bytes_per_step()
        }

        /// Dispatches one step records: one per parameter group (or buffer pair) and binding
        /// window, never one per tensor of a packed set.
        pub fn dispatches_per_step(&self) -> usize {
            self.engine.dispatches()
        }
    };
}
pub(crate) use engine_accessors;

/// Fused steps over `targets` caller buffer pairs, each element updated by its group's rule.
pub(crate) struct Engine<R: UpdateRule> {
    context: GpuContext,
    pub groups: Vec<R>,
    pub steps: u64,
    kernels: Vec<Arc<Kernel>>,
    /// Elements of each target.
    lens: Vec<u64>,
    /// Per target, one buffer per `R::STATE_SLOTS`: the target's state where some group keeps
    /// the slot, else a shared 16-byte placeholder, since the layout binds every slot.
    state: Vec<Vec<wgpu::Buffer>>,
    /// Which slots of `R::STATE_SLOTS` some group keeps.
    kept: Vec<bool>,
    placeholder: wgpu::Buffer,
    windows: Vec<Window>,
    uniforms: wgpu::Buffer,
    uniform_stride: u64,
    workgroups_per_dimension: u32,
    /// The (params, grads) pair each target was last bound to, and each window's bind group;
    /// reused while the caller passes the same buffers.
    bound: Vec<Option<(wgpu::Buffer, wgpu::Buffer)>>,
    bind_groups: Vec<Option<wgpu::BindGroup>>,
}

impl<R: UpdateRule> Engine<R> {
    /// Validates every group's rule, compiles (or reuses) their kernels and allocates the state
    /// of targets of `lens` elements. Checks every size before allocating anything, and keeps
    /// nothing if an allocation fails.
    pub fn new(
        context: &GpuContext,
        groups: Vec<R>,
        lens: Vec<u64>,
        spans: &[Span],
    ) -> Result<Self> {
        for rule in &groups {
            rule.validate()?;
        }
        if lens.contains(&0) {
            return Err(Error::EmptyParams);
        }
        let limits = context.limits();
        let dispatch = context.dispatch_limits();
        let windows = windows(
            spans,
            dispatch.window_elements,
            context.binding_elements(),
            context.alignment_elements(),
        );
        let uniform_stride = uniform_binding_size::<R>()
            .next_multiple_of(limits.min_uniform_buffer_offset_alignment as u64);
        let ring_bytes = uniform_stride * windows.len() as u64 * MAX_PENDING_STEPS;
        let kept: Vec<bool> = R::STATE_SLOTS
            .iter()
            .map(|name| groups.iter().any(|rule| rule.keeps_state(name)))
            .collect();
        let largest_state = if kept.contains(&true) {
            lens.iter().max().copied().unwrap_or(0) * 4
        } else {
            0
        };
        // Dynamic offsets into the ring are u32.
        let ring_limit = limits.max_buffer_size.min(u32::MAX as u64);
        for (what, bytes, limit) in [
            ("a state buffer", largest_state, limits.max_buffer_size),
            ("the uniform ring", ring_bytes, ring_limit),
        ] {
            if bytes > limit {
                return Err(Error::BufferTooLarge { what, bytes, limit });
            }
        }
        let device = context.device();
        let kernels = groups
            .iter()
            .map(|rule| context.kernel(KernelKey::of(rule), || Kernel::build(device, rule)))
            .collect::<Result<Vec<_>>>()?;
        let (uniforms, placeholder, state) =
            context.scoped("allocating optimizer state", || {
                let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused-optim step scalars"),
                    size: ring_bytes,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused-optim unused state slot"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                let state: Vec<Vec<wgpu::Buffer>> = lens
                    .iter()
                    .enumerate()
                    .map(|(target, &len)| {
                        let target_spans: Vec<&Span> =
                            spans.iter().filter(|span| span.target == target).collect();
                        R::STATE_SLOTS
                            .iter()
                            .zip(&kept)
                            .map(|(name, &kept)| match kept {
                                true => state_buffer(
                                    context,
                                    name,
                                    len,
                                    |span| groups[span.group].initial_state(name),
                                    &target_spans,
                                ),
                                false => placeholder.clone(),
                            })
                            .collect()
                    })
                    .collect();
                (uniforms, placeholder, state)
            })?;
        Ok(Self {
            context: context.clone(),
            groups,
            steps: 0,
            kernels,
            bound: vec![None; lens.len()],
            lens,
            state,
            kept,
            placeholder,
            bind_groups: vec![None; windows.len()],
            windows,
            uniforms,
            uniform_stride,
            workgroups_per_dimension: dispatch.workgroups_per_dimension,
        })
    }

    pub fn context(&self) -> &GpuContext {
        &self.context
    }

    /// How many (params, grads) pairs a step takes.
    pub fn targets(&self) -> usize {
        self.lens.len()
    }

    /// Dispatches per step: one per window.
    pub fn dispatches(&self) -> usize {
        self.windows.len()
    }

    /// The GPU buffer of state slot `slot` for `target`.
    pub fn state_buffer(&self, target: usize, slot: usize) -> &wgpu::Buffer {
        &self.state[target][slot]
    }

    /// Bytes of GPU memory allocated: state buffers, the placeholder and the uniform ring,
    /// each buffer counted once.
    pub fn state_bytes(&self) -> u64 {
        let state: u64 = self
            .state
            .iter()
            .flat_map(|slots| slots.iter().zip(&self.kept))
            .filter(|(_, &kept)| kept)
            .map(|(buffer, _)| buffer.size())
            .sum();
        state + self.placeholder.size() + self.uniforms.size()
    }

    /// Bytes one step must move: per window, params read and written, grads read and every
    /// state its group keeps read and written.
    pub fn bytes_per_step(&self) -> u64 {
        self.windows
            .iter()
            .map(|window| bytes_per_step(window.len(), kept_states(&self.groups[window.group])))
            .sum()
    }

    /// Records step `steps + 1` into `encoder`; on error nothing was recorded or changed.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
    ) -> Result<()> {
        self.record(encoder, pairs, None)?;
        self.steps += 1;
        Ok(())
    }

    /// Records and submits one step, with `timestamps` written around its pass (for the
    /// benchmark); returns once it is queued.
    pub fn step(
        &mut self,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        let context = self.context.clone();
        let mut encoder = context.device().create_command_encoder(&Default::default());
        self.record(&mut encoder, pairs, timestamps)?;
        context.scoped("submitting an optimizer step", || {
            context.queue().submit([encoder.finish()]);
        })?;
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
        for buffer in self.state.iter().flatten() {
            owners.insert(buffer, "optimizer's own state".to_owned());
        }
        for (target, (&(params, grads), &len)) in pairs.iter().zip(&self.lens).enumerate() {
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
                if !buffer.size().is_multiple_of(4) {
                    return Err(Error::NotF32Sized {
                        buffer: name,
                        bytes: buffer.size(),
                    });
                }
                *size = buffer.size() / 4;
                if let Some(owner) = owners.insert(buffer, name.clone()) {
                    return Err(Error::AliasedBuffers {
                        first: owner,
                        second: name,
                    });
                }
            }
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

    /// Binds the windows of every target whose pair changed, caching the new bind groups only
    /// once wgpu has accepted all of them.
    fn bind(&mut self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)], stale: &[usize]) -> Result<()> {
        let uniform_size = wgpu::BufferSize::new(uniform_binding_size::<R>());
        let created =
            self.context.scoped("binding the step's buffers", || {
                self.windows
                    .iter()
                    .enumerate()
                    .filter(|(_, window)| stale.contains(&window.target))
                    .map(|(index, window)| {
                        let (params, grads) = pairs[window.target];
                        let window_of = |buffer| wgpu::BufferBinding {
                            buffer,
                            offset: window.offset * 4,
                            size: wgpu::BufferSize::new(window.end * 4),
                        };
                        let state = self.state[window.target].iter().zip(&self.kept).map(
                            |(buffer, &kept)| match kept {
                                true => window_of(buffer),
                                false => buffer.as_entire_buffer_binding(),
                            },
                        );
                        let storage = [window_of(params), window_of(grads)]
                            .into_iter()
                            .chain(state);
                        let group = self.kernels[window.group].bind_group(
                            self.context.device(),
                            self.groups[window.group].name(),
                            wgpu::BufferBinding {
                                buffer: &self.uniforms,
                                offset: 0,
                                size: uniform_size,
                            },
                            storage,
                        );
                        (index, group)
                    })
                    .collect::<Vec<_>>()
            })?;
        for (index, group) in created {
            self.bind_groups[index] = Some(group);
        }
        for &target in stale {
            let (params, grads) = pairs[target];
            self.bound[target] = Some((params.clone(), grads.clone()));
        }
        Ok(())
    }

    /// Checks and binds the buffers, queues step `steps + 1`'s scalars into its ring slots and
    /// records the dispatches. Everything that can fail happens before the pass is recorded:
    /// wgpu reports errors inside a pass only when the encoder finishes, outside our scopes.
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        pairs: &[(&wgpu::Buffer, &wgpu::Buffer)],
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        // A lost device silently drops the work, and cached bind groups mean no wgpu call of
        // ours would notice.
        self.context.ensure_alive()?;
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
            self.bind(pairs, &stale)?;
        }
        let t = self.steps + 1;
        let scalars: Vec<R::Scalars> = self.groups.iter().map(|rule| rule.scalars(t)).collect();
        let stride = self.uniform_stride as usize;
        let mut uniform = vec![0u8; stride * self.windows.len()];
        for (slot, window) in uniform.chunks_mut(stride).zip(&self.windows) {
            let header = StepHeader::new(&self.groups[window.group], window.begin, window.end);
            let header_bytes = HEADER_BYTES as usize;
            slot[..header_bytes].copy_from_slice(bytemuck::bytes_of(&header));
            let values = bytemuck::bytes_of(&scalars[window.group]);
            slot[header_bytes..header_bytes + values.len()].copy_from_slice(values);
        }
        let ring_offset = (self.steps % MAX_PENDING_STEPS) * uniform.len() as u64;
        self.context
            .queue()
            .write_buffer(&self.uniforms, ring_offset, &uniform);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.groups[0].name()),
            timestamp_writes: timestamps,
        });
        for (index, window) in self.windows.iter().enumerate() {
            let group = self.bind_groups[index]
                .as_ref()
                .expect("every window is bound above");
            pass.set_pipeline(&self.kernels[window.group].pipeline);
            let offset = ring_offset + index as u64 * self.uniform_stride;
            pass.set_bind_group(0, group, &[offset as u32]);
            let (x, y) = dispatch_grid(window.len(), self.workgroups_per_dimension);
            pass.dispatch_workgroups(x, y, 1);
        }
        Ok(())
    }
}

/// A zeroed state buffer of `len` elements, with each span's non-zero initial value queued
/// into it (only Adagrad's `initial_accumulator_value` is non-zero).
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
