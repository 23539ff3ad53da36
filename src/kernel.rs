//! What the host layer needs from an update rule, and what it builds from one: the pipeline,
//! its bind-group layout and the dispatch geometry. Shared by all rules.

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::Result;
pub use crate::plan::Lanes;
use crate::unfused::Program;

/// Invocations per workgroup. Passed to every shader as the `WORKGROUP_SIZE` override, so this
/// constant is the only place the dispatch geometry and the shaders learn it.
pub const WORKGROUP_SIZE: u32 = 256;

/// Source of the prelude every rule's shader is appended to (see its header for the layout).
pub const PRELUDE: &str = include_str!("../shaders/common.wgsl");

/// One optimizer's update rule: its PyTorch hyperparameters, the WGSL kernel that applies them,
/// and the CPU twin that performs the same f32 operations in the same order.
pub trait UpdateRule: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Per-step values, field for field the `Scalars` struct in the rule's shader.
    type Scalars: Pod + std::fmt::Debug;

    /// The rule's WGSL, without the prelude.
    const SHADER: &'static str;

    /// Every state buffer the shader declares, in binding order (3, 4, ...), by PyTorch name.
    const STATE_SLOTS: &'static [&'static str];

    /// Whether PyTorch keeps a `step` count in this optimizer's state.
    const COUNTS_STEPS: bool;

    /// Short name for reports and labels (`adam`, `adamw`, ...).
    fn name(&self) -> &'static str;

    /// Rejects hyperparameters PyTorch rejects, naming the field.
    fn validate(&self) -> Result<()>;

    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);

    /// Whether this configuration keeps the state slot `name` (e.g. `max_exp_avg_sq` only with amsgrad).
    fn keeps_state(&self, name: &str) -> bool;

    /// The value a state buffer starts at (zero except Adagrad's `initial_accumulator_value`).
    fn initial_state(&self, _name: &str) -> f32 {
        0.0
    }

    /// PyTorch's `maximize`: the prelude negates the gradient (the `MAXIMIZE` override).
    fn maximize(&self) -> bool;

    /// The coefficient of the L2 term `weight_decay * p` the prelude adds to the gradient
    /// (0 where weight decay is decoupled, as in AdamW).
    fn l2_weight_decay(&self) -> f64;

    /// The rule's own pipeline-overridable flags (`AMSGRAD`, `NESTEROV`, ...); `MAXIMIZE` is
    /// the prelude's and comes from [`UpdateRule::maximize`].
    fn flags(&self) -> Vec<(&'static str, bool)>;

    /// The per-step values for step `t` (1-based), computed in f64 and rounded once to f32.
    fn scalars(&self, t: u64) -> Self::Scalars;

    /// The CPU twin of the shader's `update`: the new parameter from parameter `p` and
    /// gradient `g`, which arrives negated when maximizing and with the L2 term added, as the
    /// prelude passes it. `state` holds this element's value of every slot in `STATE_SLOTS`
    /// (slots this configuration does not keep hold 0 and are ignored).
    fn twin_update(&self, s: &Self::Scalars, p: f32, g: f32, state: &mut [f32]) -> f32;

    /// Step `t` as the unfused chain of elementwise operations a framework without fusion
    /// would run (the benchmark's baseline; see src/unfused.rs). Starts from
    /// [`Program::gradient`], the prelude's gradient, and uses the same scalars as the kernel.
    fn unfused(&self, t: u64, program: &mut Program);
}

/// Every override the rule's pipeline is specialised on: its own flags plus the prelude's
/// `MAXIMIZE` and `WEIGHT_DECAY` (whether there is an L2 term to add at all).
pub(crate) fn pipeline_flags<R: UpdateRule>(rule: &R) -> Vec<(&'static str, bool)> {
    let mut flags = rule.flags();
    flags.push(("MAXIMIZE", rule.maximize()));
    flags.push(("WEIGHT_DECAY", rule.l2_weight_decay() != 0.0));
    flags
}

/// The CPU twin of the prelude's `main` for one element: negate when maximizing, add the L2
/// term where there is one (as PyTorch, only for a non-zero weight decay), hand the result to
/// the rule's `update`.
pub(crate) fn twin_element<R: UpdateRule>(
    rule: &R,
    header: &StepHeader,
    s: &R::Scalars,
    param: &mut f32,
    grad: f32,
    state: &mut [f32],
) {
    let p = *param;
    let mut g = if rule.maximize() { -grad } else { grad };
    if header.weight_decay != 0.0 {
        g += header.weight_decay * p;
    }
    *param = rule.twin_update(s, p, g, state);
}

/// How many per-element state buffers `rule`'s configuration keeps.
pub(crate) fn kept_states<R: UpdateRule>(rule: &R) -> usize {
    R::STATE_SLOTS
        .iter()
        .filter(|name| rule.keeps_state(name))
        .count()
}

/// Bytes one step over `len` elements must move with `state_buffers` state buffers: params
/// read and written, grads read, each state read and written. Shared by the optimizer's
/// bandwidth figures and the benchmark's roofline, which must move exactly as much.
pub fn bytes_per_step(len: u64, state_buffers: usize) -> u64 {
    len * 4 * (3 + 2 * state_buffers as u64)
}

/// How a kernel receives the values of each dispatch (the shaders' `step`: which items to
/// update, the L2 coefficient and the rule's per-step scalars). Either way, any number of
/// steps may be recorded before a submit, each with its own values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepValues {
    /// Immediates (push constants), set in the compute pass before each dispatch: nothing is
    /// allocated or copied, and the values travel inside the recorded commands. Needs
    /// `wgpu::Features::IMMEDIATES` and a `max_immediate_size` that holds them.
    Immediates,
    /// A uniform buffer with one slot per dispatch, read at a dynamic offset. Each step
    /// records a copy into those slots ahead of its pass, from a staging buffer of its own,
    /// so a later step recorded before the submit never overwrites values an earlier one
    /// still has to read. For adapters without immediates.
    UniformCopy,
}

impl StepValues {
    /// The WGSL declaration of `step` for this way of passing it.
    fn declaration(self) -> &'static str {
        match self {
            StepValues::Immediates => "var<immediate> step: Step;",
            StepValues::UniformCopy => "@group(0) @binding(0) var<uniform> step: Step;",
        }
    }
}

/// Assembles a kernel's WGSL: the declarations of `V` and `step` that the shader files leave
/// to the host (see shaders/common.wgsl), then `body`.
pub(crate) fn assemble(body: &str, lanes: Lanes, values: StepValues) -> String {
    let alias = match lanes {
        Lanes::Vector => "vec4<f32>",
        Lanes::Scalar => "f32",
    };
    format!(
        "// Declared by the host (src/kernel.rs): {lanes:?} lanes, values as {values:?}.\n\
         alias V = {alias};\n{}\n{body}",
        values.declaration()
    )
}

/// The full WGSL of a rule's kernel: prelude plus the rule's own file, for `lanes` and
/// `values` (see shaders/common.wgsl).
pub fn shader_source<R: UpdateRule>(lanes: Lanes, values: StepValues) -> String {
    assemble(&format!("{PRELUDE}\n{}", R::SHADER), lanes, values)
}

/// Header of the per-dispatch values (`Step` in shaders/common.wgsl): which items of the
/// bound window to update, counted in the dispatch's lanes, and the L2 coefficient. The rule's
/// `Scalars` follow it at byte 16.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StepHeader {
    pub begin: u32,
    pub end: u32,
    pub weight_decay: f32,
    pub pad: u32,
}

impl StepHeader {
    pub fn new<R: UpdateRule>(rule: &R, begin: u64, end: u64) -> Self {
        Self {
            begin: begin as u32,
            end: end as u32,
            weight_decay: rule.l2_weight_decay() as f32,
            pad: 0,
        }
    }
}

pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<StepHeader>();

/// Bytes of rule `R`'s per-dispatch values: header plus scalars.
pub(crate) fn values_size<R: UpdateRule>() -> u64 {
    (HEADER_BYTES + std::mem::size_of::<R::Scalars>()) as u64
}

/// The values of one dispatch of `rule`: its header, then `scalars`.
pub(crate) fn step_values<R: UpdateRule>(
    rule: &R,
    scalars: &R::Scalars,
    begin: u64,
    end: u64,
) -> Vec<u8> {
    let mut bytes = bytemuck::bytes_of(&StepHeader::new(rule, begin, end)).to_vec();
    bytes.extend_from_slice(bytemuck::bytes_of(scalars));
    bytes
}

/// Identifies a compiled kernel: its shader, lanes, how it gets its values, and its override
/// values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub shader: &'static str,
    pub lanes: Lanes,
    pub values: StepValues,
    pub constants: Vec<(&'static str, u32)>,
}

impl KernelKey {
    /// The key of `rule`'s pipeline: its shader and flags.
    pub fn of<R: UpdateRule>(rule: &R, lanes: Lanes, values: StepValues) -> Self {
        Self {
            shader: R::SHADER,
            lanes,
            values,
            constants: pipeline_flags(rule)
                .into_iter()
                .map(|(name, on)| (name, on as u32))
                .collect(),
        }
    }
}

/// What a kernel's pipeline is built from, beyond its WGSL.
pub(crate) struct KernelShape<'a> {
    pub label: &'a str,
    /// Pipeline-overridable constants other than `WORKGROUP_SIZE`.
    pub overrides: &'a [(&'a str, f64)],
    /// Bytes of the shader's `Step`.
    pub values_size: u64,
    pub state_slots: u32,
    pub lanes: Lanes,
    pub values: StepValues,
}

pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Builds the pipeline for `rule`'s flag variant. Runs inside the context's error scopes.
    pub fn build<R: UpdateRule>(
        device: &wgpu::Device,
        rule: &R,
        lanes: Lanes,
        values: StepValues,
    ) -> Self {
        let flags: Vec<(&str, f64)> = pipeline_flags(rule)
            .into_iter()
            .map(|(name, on)| (name, if on { 1.0 } else { 0.0 }))
            .collect();
        Self::compile(
            device,
            &shader_source::<R>(lanes, values),
            KernelShape {
                label: rule.name(),
                overrides: &flags,
                values_size: values_size::<R>(),
                state_slots: R::STATE_SLOTS.len() as u32,
                lanes,
                values,
            },
        )
    }

    /// Compiles a kernel with the layout every fused-optim shader declares: the values as
    /// immediates or, at binding 0, a uniform with a dynamic offset; binding 1 the params, 2 the
    /// grads (read-only), then `state_slots` read-write state buffers, all arrays of the
    /// shape's lanes; entry point `main`, `WORKGROUP_SIZE` overridden.
    pub fn compile(device: &wgpu::Device, source: &str, shape: KernelShape) -> Self {
        let item_bytes = shape.lanes.width() * 4;
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: wgpu::BufferSize::new(item_bytes),
            },
            count: None,
        };
        let mut entries = Vec::new();
        if shape.values == StepValues::UniformCopy {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(uniform_binding_size(
                        shape.values_size,
                    )),
                },
                count: None,
            });
        }
        entries.extend([storage(1, false), storage(2, true)]);
        entries.extend((0..shape.state_slots).map(|slot| storage(3 + slot, false)));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(shape.label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(shape.label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: match shape.values {
                StepValues::Immediates => shape.values_size as u32,
                StepValues::UniformCopy => 0,
            },
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shape.label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let mut constants: Vec<(&str, f64)> = vec![("WORKGROUP_SIZE", WORKGROUP_SIZE as f64)];
        constants.extend_from_slice(shape.overrides);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shape.label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // The kernels use no workgroup memory.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Self { pipeline, layout }
    }

    /// A bind group for this kernel's layout: the values' uniform at binding 0 where they
    /// come in one, then `storage` at bindings 1.. (params, grads, then one binding per state
    /// slot).
    pub fn bind_group<'a>(
        &self,
        device: &wgpu::Device,
        label: &str,
        values: Option<wgpu::BufferBinding<'a>>,
        storage: impl IntoIterator<Item = wgpu::BufferBinding<'a>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = values
            .map(|values| (0, values))
            .into_iter()
            .chain((1..).zip(storage))
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(buffer),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &self.layout,
            entries: &entries,
        })
    }
}

/// Bytes of a uniform binding of `values_size` bytes of values: WGSL's uniform layout rounds
/// the `Step` struct to 16.
fn uniform_binding_size(values_size: u64) -> u64 {
    values_size.next_multiple_of(16)
}

/// Where the dispatches of one step read their values: immediates, or the slots of a uniform
/// buffer (see [`StepValues`]). Owned by each optimizer (and the unfused chain).
pub(crate) struct ValueSlots {
    /// Bytes of one dispatch's values, and between two dispatches' values in a step's bytes.
    size: u64,
    stride: u64,
    /// The slots, for [`StepValues::UniformCopy`]; none for immediates.
    uniforms: Option<wgpu::Buffer>,
}

impl ValueSlots {
    /// Slots for `dispatches` dispatches of `size` bytes of values each. Allocates (the
    /// uniform) only for [`StepValues::UniformCopy`]; call inside an error scope.
    pub fn new(device: &wgpu::Device, values: StepValues, size: u64, dispatches: usize) -> Self {
        let uniforms = (values == StepValues::UniformCopy).then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim step values"),
                size: Self::bytes_needed(device, values, size, dispatches),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let stride = match uniforms {
            Some(_) => Self::uniform_stride(device, size),
            None => size,
        };
        Self {
            size,
            stride,
            uniforms,
        }
    }

    /// Bytes the uniform of `dispatches` slots would take with `values` (0 for immediates), to
    /// check against the adapter's limits before allocating anything.
    pub fn bytes_needed(
        device: &wgpu::Device,
        values: StepValues,
        size: u64,
        dispatches: usize,
    ) -> u64 {
        match values {
            StepValues::Immediates => 0,
            StepValues::UniformCopy => {
                Self::uniform_stride(device, size) * dispatches.max(1) as u64
            }
        }
    }

    fn uniform_stride(device: &wgpu::Device, size: u64) -> u64 {
        uniform_binding_size(size)
            .next_multiple_of(device.limits().min_uniform_buffer_offset_alignment as u64)
    }

    /// Bytes of GPU memory allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.uniforms.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// Binding 0 of every bind group, when the values come in a uniform.
    pub fn binding(&self) -> Option<wgpu::BufferBinding<'_>> {
        self.uniforms.as_ref().map(|buffer| wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: wgpu::BufferSize::new(uniform_binding_size(self.size)),
        })
    }

    /// Lays out one step's values, one entry per dispatch, as [`ValueSlots::stage`] and
    /// [`ValueSlots::set`] read them.
    pub fn layout(&self, values: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, value) in values.into_iter().enumerate() {
            debug_assert_eq!(value.len() as u64, self.size);
            bytes.resize(index * self.stride as usize, 0);
            bytes.extend_from_slice(&value);
        }
        bytes
    }

    /// For a uniform, records into `encoder` a copy of `step` (from [`ValueSlots::layout`])
    /// into the slots, from a staging buffer of this step's own, ahead of the step's pass.
    /// Nothing to do for immediates.
    pub fn stage(
        &self,
        context: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        step: &[u8],
    ) -> Result<()> {
        let Some(uniforms) = &self.uniforms else {
            return Ok(());
        };
        let staging = context.scoped("staging the step's values", || {
            context
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("fused-optim staged step values"),
                    contents: step,
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        encoder.copy_buffer_to_buffer(&staging, 0, uniforms, 0, step.len() as u64);
        Ok(())
    }

    /// Sets dispatch `index`'s bind group and values in `pass`.
    pub fn set(
        &self,
        pass: &mut wgpu::ComputePass,
        index: usize,
        group: &wgpu::BindGroup,
        step: &[u8],
    ) {
        let start = index * self.stride as usize;
        match self.uniforms {
            Some(_) => pass.set_bind_group(0, group, &[start as u32]),
            None => {
                pass.set_bind_group(0, group, &[]);
                pass.set_immediates(0, &step[start..start + self.size as usize]);
            }
        }
    }
}

/// Workgroup grid covering `n` items (vec4s or f32s): a row of up to `max_per_dim` workgroups,
/// folded into as many rows as needed. `main` in shaders/common.wgsl unfolds it; invocations
/// past `n` return early.
pub fn dispatch_grid(n: u64, max_per_dim: u32) -> (u32, u32) {
    let groups = n.div_ceil(WORKGROUP_SIZE as u64).max(1);
    let rows = groups.div_ceil(max_per_dim as u64);
    let columns = groups.div_ceil(rows);
    (columns as u32, rows as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adagrad, Adam, RmsProp, Roofline, Sgd, MAX_STEP_VALUES_BYTES};

    #[test]
    fn every_rules_values_fit_the_immediates_the_context_checks_for() {
        let sizes = [
            values_size::<Sgd>(),
            values_size::<Adam>(),
            values_size::<RmsProp>(),
            values_size::<Adagrad>(),
            values_size::<Roofline>(),
        ];
        assert_eq!(sizes.iter().max(), Some(&MAX_STEP_VALUES_BYTES));
        // set_immediates takes whole 4-byte words.
        assert!(sizes.iter().all(|size| size % 4 == 0), "{sizes:?}");
    }

    #[test]
    fn grid_covers_every_element_without_exceeding_the_limit() {
        for (n, max) in [
            (1, 65535),
            (256, 65535),
            (257, 65535),
            (65535 * 256, 65535),
            (65535 * 256 + 1, 65535),
            (1 << 32, 65535),
            (1000, 3),
        ] {
            let (x, y) = dispatch_grid(n, max);
            assert!(x <= max && y <= max, "n={n}: {x}x{y} past {max}");
            let invocations = x as u64 * y as u64 * WORKGROUP_SIZE as u64;
            assert!(invocations >= n, "n={n}: {x}x{y} too small");
            // No whole spare row: folding wastes less than one row of workgroups.
            assert!(
                invocations - n < x as u64 * WORKGROUP_SIZE as u64,
                "n={n}: {x}x{y} wasteful"
            );
        }
    }
}
