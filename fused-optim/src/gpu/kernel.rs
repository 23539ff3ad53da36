//! What the host layer builds from a rule's WGSL: the assembled source, the pipeline, its
//! bind-group layout, the per-dispatch values and the dispatch geometry. Shared by all rules.

use bytemuck::{Pod, Zeroable};

use super::glue::{accessors, roles, KernelFormats, Role};
pub use super::plan::Lanes;
use super::step_kernel::StepKernel;
use crate::format::Precision;
use crate::rule::declaration::ScalarFields;
use crate::rule::slot_signs;

/// Invocations per workgroup. Passed to every shader as the `WORKGROUP_SIZE` override, so this
/// constant is the only place the dispatch geometry and the shaders learn it.
pub const WORKGROUP_SIZE: u32 = 256;

/// Source of the prelude every rule's shader is appended to (see its header for the layout).
pub const PRELUDE: &str = include_str!("prelude.wgsl");

/// Source of the 16-bit storage formats' codecs, ahead of the prelude in every rule's kernel.
pub const CODEC: &str = include_str!("../format/codec.wgsl");

/// Source of the block formats (every width and scale: the formats are parameters of it) and
/// the 8-bit master correction, after [`CODEC`] in every rule's kernel.
const COMPACT: &str = concat!(
    include_str!("../format/block.wgsl"),
    "\n",
    include_str!("../format/correction.wgsl")
);

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
/// to the host (see prelude.wgsl), then `body`.
pub(crate) fn assemble(body: &str, lanes: Lanes, values: StepValues) -> String {
    let aliases = match lanes {
        Lanes::Vector => {
            "alias V = vec4<f32>;\nalias VU = vec4<u32>;\nalias VI = vec4<i32>;\n\
             alias VB = vec4<bool>;\n\
             fn lanes_max(v: V) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }"
        }
        Lanes::Scalar => {
            "alias V = f32;\nalias VU = u32;\nalias VI = i32;\nalias VB = bool;\n\
             fn lanes_max(v: V) -> f32 { return v; }"
        }
    };
    format!(
        "// Declared by the host (src/gpu/kernel.rs): {lanes:?} lanes, values as {values:?}.\n\
         {aliases}\n{}\n{body}",
        values.declaration()
    )
}

/// The full WGSL of a rule's kernel for `lanes`, `values` and storage `formats`: the codecs,
/// the accessors generated for the formats, the prelude and the rule's own file (see
/// prelude.wgsl), or the rule's file alone where it brings its own entry point (f32 only).
pub(crate) fn kernel_source<R: StepKernel>(
    lanes: Lanes,
    values: StepValues,
    formats: &KernelFormats,
) -> String {
    let scalars = scalars_struct(<R::Scalars as ScalarFields>::FIELDS);
    match R::OWN_ENTRY_POINT {
        true => assemble(&format!("{scalars}\n{}", R::SHADER), lanes, values),
        false => assemble(
            &format!(
                "{CODEC}\n{COMPACT}\n{}\n{scalars}\n{PRELUDE}\n{}",
                accessors(&slot_signs(R::STATE_SLOTS, R::NON_NEGATIVE), formats, lanes),
                R::SHADER
            ),
            lanes,
            values,
        ),
    }
}

/// The shader's `struct Scalars`, from the Rust struct's declared fields: one declaration of
/// the per-step values, so the two cannot drift apart.
fn scalars_struct(fields: &[(&str, &str)]) -> String {
    let members: String = fields
        .iter()
        .map(|(name, ty)| format!("    {name}: {ty},\n"))
        .collect();
    format!("// Declared by the host from the Rust `Scalars` (declare_scalars!).\nstruct Scalars {{\n{members}}}\n")
}

/// The full WGSL of `R`'s kernel for `lanes`, `values` and `precision` with every state slot
/// kept, with the grad guard's bindings where `guarded`: what the naga test translates.
pub fn shader_source<R: StepKernel>(
    lanes: Lanes,
    values: StepValues,
    precision: &Precision,
    guarded: bool,
) -> String {
    let formats = KernelFormats {
        params: precision.params,
        grads: precision.grads,
        master: precision.master,
        rounding: precision.rounding,
        slots: R::STATE_SLOTS
            .iter()
            .map(|slot| Some(precision.state_format(slot)))
            .collect(),
        guarded,
    };
    kernel_source::<R>(lanes, values, &formats)
}

/// `R`'s full WGSL in each form the host builds (vector and scalar lanes, values as
/// immediates or in a uniform) for each precision preset, unguarded and, in f32 and the
/// leanest preset, guarded, named `file [lanes, values, precision]`: what the naga test
/// translates.
pub fn shader_forms<R: StepKernel>(file: &str) -> Vec<(String, String)> {
    let mut sources = Vec::new();
    let presets = match R::OWN_ENTRY_POINT {
        true => vec![("f32", Precision::default())],
        false => Precision::presets(),
    };
    let guarded = match R::OWN_ENTRY_POINT {
        true => vec![],
        false => vec![
            ("f32, guarded", Precision::default()),
            ("lean, guarded", Precision::lean()),
        ],
    };
    let forms = presets
        .into_iter()
        .map(|(name, precision)| (name.to_owned(), precision, false))
        .chain(
            guarded
                .into_iter()
                .map(|(name, precision)| (name.to_owned(), precision, true)),
        );
    for (name, precision, guarded) in forms {
        for lanes in [Lanes::Vector, Lanes::Scalar] {
            for values in [StepValues::Immediates, StepValues::UniformCopy] {
                sources.push((
                    format!("{file} [{lanes:?}, {values:?}, {name}]"),
                    shader_source::<R>(lanes, values, &precision, guarded),
                ));
            }
        }
    }
    sources
}

/// Header of the per-dispatch values (`Step` in prelude.wgsl): which items of the
/// bound window to update, counted in the dispatch's lanes, the L2 coefficient, and what
/// stochastic rounding hashes: the span index of the binding's first element and the step.
/// The rule's `Scalars` follow it at byte 32 (a multiple of 16, as a uniform's struct member
/// must be).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StepHeader {
    begin: u32,
    end: u32,
    weight_decay: f32,
    origin: u32,
    seed: u32,
    group: u32,
    pad: [u32; 2],
}

impl StepHeader {
    pub fn new<R: StepKernel>(rule: &R, dispatch: &DispatchValues) -> Self {
        Self {
            begin: dispatch.begin as u32,
            end: dispatch.end as u32,
            weight_decay: rule.l2_weight_decay() as f32,
            // Wraps past 2^32 elements: it only feeds a hash.
            origin: dispatch.origin as u32,
            seed: dispatch.step as u32,
            group: dispatch.group as u32,
            pad: [0; 2],
        }
    }
}

/// Where one dispatch works and for which step: the header's inputs.
pub(crate) struct DispatchValues {
    pub begin: u64,
    pub end: u64,
    pub origin: u64,
    pub step: u64,
    pub group: usize,
}

pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<StepHeader>();

/// The environment variable naming a directory into which every kernel the library compiles
/// is written as assembled, for reading: `<label>-<hash of the source>.wgsl`.
pub const DUMP_KERNELS: &str = "FUSED_OPTIM_DUMP_KERNELS";

/// Writes `source` into the [`DUMP_KERNELS`] directory, where that is set. A kernel that
/// cannot be written is reported on stderr and compiled anyway: dumping is for reading.
pub(crate) fn dump(label: &str, source: &str) {
    use std::hash::{Hash, Hasher};
    let Some(dir) = std::env::var_os(DUMP_KERNELS) else {
        return;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut hasher);
    let path = std::path::Path::new(&dir).join(format!("{label}-{:016x}.wgsl", hasher.finish()));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, source));
    if let Err(error) = written {
        eprintln!("fused-optim: could not write {}: {error}", path.display());
    }
}

/// Bytes of rule `R`'s per-dispatch values: header plus scalars.
pub(crate) fn values_size<R: StepKernel>() -> u64 {
    (HEADER_BYTES + std::mem::size_of::<R::Scalars>()) as u64
}

/// The values of one dispatch of `rule`: its header, then `scalars`.
pub(crate) fn step_values<R: StepKernel>(
    rule: &R,
    scalars: &R::Scalars,
    dispatch: &DispatchValues,
) -> Vec<u8> {
    let mut bytes = bytemuck::bytes_of(&StepHeader::new(rule, dispatch)).to_vec();
    bytes.extend_from_slice(bytemuck::bytes_of(scalars));
    bytes
}

/// Identifies a compiled kernel: its shader, lanes, how it gets its values, its override
/// values and its storage formats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub shader: &'static str,
    pub lanes: Lanes,
    pub values: StepValues,
    pub constants: Vec<(&'static str, u32)>,
    pub formats: KernelFormats,
}

impl KernelKey {
    /// The key of `rule`'s pipeline: its shader, flags and formats.
    pub fn of<R: StepKernel>(
        rule: &R,
        lanes: Lanes,
        values: StepValues,
        formats: &KernelFormats,
    ) -> Self {
        Self {
            shader: R::SHADER,
            lanes,
            values,
            constants: rule.pipeline_constants(),
            formats: formats.clone(),
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
    /// The storage bindings, in binding order.
    pub roles: &'a [Role],
    pub values: StepValues,
    /// Items each invocation updates.
    pub items: u64,
}

pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Items each invocation updates (the shader's `ITEMS`).
    pub items: u64,
}

impl Kernel {
    /// Builds the pipeline for `rule`'s flag variant in `formats`. Runs inside the context's
    /// error scopes.
    pub fn build<R: StepKernel>(
        device: &wgpu::Device,
        rule: &R,
        lanes: Lanes,
        values: StepValues,
        formats: &KernelFormats,
    ) -> Self {
        let constants: Vec<(&str, f64)> = rule
            .pipeline_constants()
            .into_iter()
            .map(|(name, value)| (name, value as f64))
            .collect();
        Self::compile(
            device,
            &kernel_source::<R>(lanes, values, formats),
            KernelShape {
                label: rule.name(),
                overrides: &constants,
                values_size: values_size::<R>(),
                roles: &roles(formats),
                values,
                // A rule with its own entry point updates one item per invocation.
                items: match R::OWN_ENTRY_POINT {
                    true => 1,
                    false => formats.items(lanes),
                },
            },
        )
    }

    /// Compiles a kernel with the layout every fused-optim shader declares: the values as
    /// immediates or, at binding 0, a uniform with a dynamic offset; then the storage buffers
    /// of `shape.roles` (glue.rs numbers them); entry point `main`, `WORKGROUP_SIZE`
    /// overridden.
    pub fn compile(device: &wgpu::Device, source: &str, shape: KernelShape) -> Self {
        let storage = |role: &Role| wgpu::BindGroupLayoutEntry {
            binding: role.binding(),
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match role.uniform() {
                    true => wgpu::BufferBindingType::Uniform,
                    false => wgpu::BufferBindingType::Storage {
                        read_only: role.read_only(),
                    },
                },
                has_dynamic_offset: false,
                // Checked against the shader when a bind group is used.
                min_binding_size: None,
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
        entries.extend(shape.roles.iter().map(storage));
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
        dump(shape.label, source);
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
                // No kernel has workgroup memory.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Self {
            pipeline,
            layout,
            items: shape.items,
        }
    }

    /// A bind group for this kernel's layout: the values' uniform at binding 0 where they
    /// come in one, then `storage`, each at its role's binding.
    pub fn bind_group<'a>(
        &self,
        device: &wgpu::Device,
        label: &str,
        values: Option<wgpu::BufferBinding<'a>>,
        storage: impl IntoIterator<Item = (Role, wgpu::BufferBinding<'a>)>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = values
            .map(|values| (0, values))
            .into_iter()
            .chain(storage.into_iter().map(|(role, b)| (role.binding(), b)))
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
pub(crate) fn uniform_binding_size(values_size: u64) -> u64 {
    values_size.next_multiple_of(16)
}

/// Workgroup grid covering `n` items (vec4s or f32s): a row of up to `max_per_dim` workgroups,
/// folded into as many rows as needed. `main` in prelude.wgsl unfolds it; invocations
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
