//! The stepping machinery every optimizer kind shares: state allocation, the windows and
//! dispatches a step is cut into, cached bind groups, the per-dispatch values and the compute
//! pass. It knows no single rule and no single way of laying out tensors: an optimizer
//! describes its caller's buffer pairs as targets and says which group's rule updates which
//! elements of each.

use std::collections::HashMap;
use std::sync::Arc;

use super::context::GpuContext;
use super::kernel::{dispatch_grid, step_values, values_size, Kernel, KernelKey, ValueSlots};
use super::plan::{dispatches, windows, Dispatch, Span, Window};
use crate::error::{Error, Result};
use crate::rule::{bytes_per_step, kept_states, UpdateRule};

/// Fused steps over `targets` caller buffer pairs, each element updated by its group's rule.
pub(crate) struct Engine<R: UpdateRule> {
    context: GpuContext,
    pub groups: Vec<R>,
    pub steps: u64,
    /// Each group's host state (`UpdateRule::HOST_STATE`) as of step `steps`.
    pub host: Vec<Vec<f64>>,
    /// Elements of each target.
    lens: Vec<u64>,
    /// Per target, one buffer per `R::STATE_SLOTS`: the target's state where some group keeps
    /// the slot, else a shared 16-byte placeholder, since the layout binds every slot.
    state: Vec<Vec<wgpu::Buffer>>,
    /// Which slots of `R::STATE_SLOTS` some group keeps.
    kept: Vec<bool>,
    placeholder: wgpu::Buffer,
    windows: Vec<Window>,
    dispatches: Vec<Dispatch>,
    /// Each dispatch's kernel: its group's rule, vector or scalar.
    kernels: Vec<Arc<Kernel>>,
    values: ValueSlots,
    workgroups_per_dimension: u32,
    /// The (params, grads) pair each target was last bound to, and each dispatch's bind
    /// group; reused while the caller passes the same buffers.
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
        // Sizes are checked before anything is planned or allocated: a length no buffer can
        // hold is refused here, not found out by cutting it into windows.
        if let Some(bytes) = lens
            .iter()
            .map(|len| len.saturating_mul(4))
            .find(|&bytes| bytes > limits.max_buffer_size)
        {
            return Err(Error::BufferTooLarge {
                what: "a tensor of this length (its params, grads and each state buffer)",
                bytes,
                limit: limits.max_buffer_size,
            });
        }
        let dispatch = context.dispatch_limits();
        let windows = windows(
            spans,
            dispatch.window_elements,
            context.binding_elements(),
            context.alignment_elements(),
        );
        let dispatches = dispatches(&windows);
        let device = context.device();
        let values = context.step_values_for(values_size::<R>());
        let values_bytes =
            ValueSlots::bytes_needed(device, values, values_size::<R>(), dispatches.len());
        // Dynamic offsets into the values' uniform are u32.
        let values_limit = limits.max_buffer_size.min(u32::MAX as u64);
        if values_bytes > values_limit {
            return Err(Error::BufferTooLarge {
                what: "the uniform of the step's values",
                bytes: values_bytes,
                limit: values_limit,
            });
        }
        let kept: Vec<bool> = R::STATE_SLOTS
            .iter()
            .map(|name| groups.iter().any(|rule| rule.keeps_state(name)))
            .collect();
        let kernels = dispatches
            .iter()
            .map(|d| {
                let rule = &groups[windows[d.window].group];
                let key = KernelKey::of(rule, d.lanes, values);
                context.kernel(key, || Kernel::build(device, rule, d.lanes, values))
            })
            .collect::<Result<Vec<_>>>()?;
        let (values, placeholder, state) = context.scoped("allocating optimizer state", || {
            let values = ValueSlots::new(device, values, values_size::<R>(), dispatches.len());
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
            (values, placeholder, state)
        })?;
        Ok(Self {
            context: context.clone(),
            host: groups.iter().map(UpdateRule::initial_host_state).collect(),
            groups,
            steps: 0,
            kernels,
            bound: vec![None; lens.len()],
            lens,
            state,
            kept,
            placeholder,
            bind_groups: vec![None; dispatches.len()],
            windows,
            dispatches,
            values,
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

    /// Dispatches per step: one per window, plus one per window ending mid-vec4.
    pub fn dispatches(&self) -> usize {
        self.dispatches.len()
    }

    /// The GPU buffer of state slot `slot` for `target`.
    pub fn state_buffer(&self, target: usize, slot: usize) -> &wgpu::Buffer {
        &self.state[target][slot]
    }

    /// Bytes of GPU memory allocated: state buffers, the placeholder and the values'
    /// uniform, each buffer counted once.
    pub fn state_bytes(&self) -> u64 {
        let state: u64 = self
            .state
            .iter()
            .flat_map(|slots| slots.iter().zip(&self.kept))
            .filter(|(_, &kept)| kept)
            .map(|(buffer, _)| buffer.size())
            .sum();
        state + self.placeholder.size() + self.values.allocated_bytes()
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
        self.host = self.record(encoder, pairs, None)?;
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
        let host = self.record(&mut encoder, pairs, timestamps)?;
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

    /// Binds the dispatches of every target whose pair changed, caching the new bind groups
    /// only once wgpu has accepted all of them.
    fn bind(&mut self, pairs: &[(&wgpu::Buffer, &wgpu::Buffer)], stale: &[usize]) -> Result<()> {
        let created =
            self.context.scoped("binding the step's buffers", || {
                self.dispatches
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| stale.contains(&self.windows[d.window].target))
                    .map(|(index, d)| {
                        let window = &self.windows[d.window];
                        let (params, grads) = pairs[window.target];
                        let window_of = |buffer| wgpu::BufferBinding {
                            buffer,
                            offset: window.offset * 4,
                            size: wgpu::BufferSize::new(d.binding_bytes()),
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
    ) -> Result<Vec<Vec<f64>>> {
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
        let mut host = self.host.clone();
        for (rule, host) in self.groups.iter().zip(&mut host) {
            rule.advance_host_state(t, host);
        }
        let scalars: Vec<R::Scalars> = self
            .groups
            .iter()
            .zip(&host)
            .map(|(rule, host)| rule.scalars(t, host))
            .collect();
        let step = self.values.layout(self.dispatches.iter().map(|d| {
            let group = self.windows[d.window].group;
            step_values(&self.groups[group], &scalars[group], d.begin, d.end)
        }));
        self.values.stage(&self.context, encoder, &step)?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(self.groups[0].name()),
            timestamp_writes: timestamps,
        });
        for (index, d) in self.dispatches.iter().enumerate() {
            let group = self.bind_groups[index]
                .as_ref()
                .expect("every dispatch is bound above");
            pass.set_pipeline(&self.kernels[index].pipeline);
            self.values.set(&mut pass, index, group, &step);
            let (x, y) = dispatch_grid(d.len(), self.workgroups_per_dimension);
            pass.dispatch_workgroups(x, y, 1);
        }
        Ok(host)
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
