//! What the host layer needs from an update rule, and what it builds from one: the pipeline,
//! its bind-group layout and the dispatch geometry. Shared by all rules.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
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

/// Every override the rule's pipeline is specialised on: its own flags plus the prelude's `MAXIMIZE`.
pub(crate) fn pipeline_flags<R: UpdateRule>(rule: &R) -> Vec<(&'static str, bool)> {
    let mut flags = rule.flags();
    flags.push(("MAXIMIZE", rule.maximize()));
    flags
}

/// The CPU twin of the prelude's `main` for one element: negate when maximizing, add the L2
/// term, hand the result to the rule's `update`.
pub(crate) fn twin_element<R: UpdateRule>(
    rule: &R,
    header: &StepHeader,
    s: &R::Scalars,
    param: &mut f32,
    grad: f32,
    state: &mut [f32],
) {
    let p = *param;
    let g = if rule.maximize() { -grad } else { grad };
    *param = rule.twin_update(s, p, g + header.weight_decay * p, state);
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

/// The full WGSL of a rule's kernel: prelude plus the rule's own file.
pub fn shader_source<R: UpdateRule>() -> String {
    format!("{PRELUDE}\n{}", R::SHADER)
}

/// Header of the per-step uniform (`Step` in shaders/common.wgsl): which indices of the bound
/// window to update, and the L2 coefficient. The rule's `Scalars` follow it at byte 16.
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

pub(crate) const HEADER_BYTES: u64 = std::mem::size_of::<StepHeader>() as u64;

/// Bytes of the uniform binding for rule `R`: header plus scalars, rounded to 16 as WGSL's
/// uniform layout rounds the `Step` struct.
pub(crate) fn uniform_binding_size<R: UpdateRule>() -> u64 {
    (HEADER_BYTES + std::mem::size_of::<R::Scalars>() as u64).next_multiple_of(16)
}

/// Identifies a compiled kernel: its shader and its override values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub shader: &'static str,
    pub constants: Vec<(&'static str, u32)>,
}

impl KernelKey {
    /// The key of `rule`'s pipeline: its shader and flags.
    pub fn of<R: UpdateRule>(rule: &R) -> Self {
        Self {
            shader: R::SHADER,
            constants: pipeline_flags(rule)
                .into_iter()
                .map(|(name, on)| (name, on as u32))
                .collect(),
        }
    }
}

pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Builds the pipeline for `rule`'s flag variant. Runs inside the context's error scopes.
    pub fn build<R: UpdateRule>(device: &wgpu::Device, rule: &R) -> Self {
        let flags: Vec<(&str, f64)> = pipeline_flags(rule)
            .into_iter()
            .map(|(name, on)| (name, if on { 1.0 } else { 0.0 }))
            .collect();
        Self::compile(
            device,
            rule.name(),
            &shader_source::<R>(),
            &flags,
            uniform_binding_size::<R>(),
            R::STATE_SLOTS.len() as u32,
        )
    }

    /// Compiles a kernel with the layout every fused-optim shader declares: binding 0 a uniform
    /// (dynamic offset) of `uniform_size` bytes, 1 the params, 2 the grads (read-only), then
    /// `state_slots` read-write state buffers; entry point `main`, `WORKGROUP_SIZE` overridden.
    pub fn compile(
        device: &wgpu::Device,
        label: &str,
        source: &str,
        overrides: &[(&str, f64)],
        uniform_size: u64,
        state_slots: u32,
    ) -> Self {
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: wgpu::BufferSize::new(4),
            },
            count: None,
        };
        let mut entries = vec![
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(uniform_size),
                },
                count: None,
            },
            storage(1, false),
            storage(2, true),
        ];
        entries.extend((0..state_slots).map(|slot| storage(3 + slot, false)));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let mut constants: Vec<(&str, f64)> = vec![("WORKGROUP_SIZE", WORKGROUP_SIZE as f64)];
        constants.extend_from_slice(overrides);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
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

    /// A bind group for this kernel's layout: the uniform binding, then `storage` at bindings
    /// 1.. (params, grads, then one binding per state slot).
    pub fn bind_group<'a>(
        &self,
        device: &wgpu::Device,
        label: &str,
        uniform: wgpu::BufferBinding<'a>,
        storage: impl IntoIterator<Item = wgpu::BufferBinding<'a>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(uniform)
            .chain(storage)
            .zip(0..)
            .map(|(buffer, binding)| wgpu::BindGroupEntry {
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

/// Workgroup grid covering `n` elements: a row of up to `max_per_dim` workgroups, folded into
/// as many rows as needed. `element_index` in shaders/common.wgsl unfolds it; invocations past
/// `n` return early.
pub fn dispatch_grid(n: u64, max_per_dim: u32) -> (u32, u32) {
    let groups = n.div_ceil(WORKGROUP_SIZE as u64).max(1);
    let rows = groups.div_ceil(max_per_dim as u64);
    let columns = groups.div_ceil(rows);
    (columns as u32, rows as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
