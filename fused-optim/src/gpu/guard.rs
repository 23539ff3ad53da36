//! The grad guard on the device (src/guard.rs says what it does): its status buffer, the
//! reduction and finalize kernels (guard.wgsl), and the step's guard values, staged into the
//! caller's encoder like the rule's values. Knows no rule: the rows of scalars it stages are
//! bytes the engine hands it.
//!
//! A skipped step leaves the step count where it was, and only the device knows whether a
//! step was skipped. So each step stages the rule's scalars for every step count the device
//! may have reached ("rows"), and the update kernels pick the row of the count in the status.
//! The range stays short because each step's status is copied into a small buffer mapped once
//! its submission completes: the host learns the count a few steps late, never waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::kernel::{dispatch_grid, dump, CODEC, WORKGROUP_SIZE};
use super::plan::{windows, Grain, Span, Window};
use crate::error::{Error, Result};
use crate::format::Dtype;
use crate::guard::{GradGuard, GradPartial, GradStatus, NormType, StatusWords, REDUCTION_CHUNK};

const SOURCE: &str = include_str!("guard.wgsl");

/// Bytes of the status: `GradStatus`.
const STATUS_BYTES: u64 = std::mem::size_of::<StatusWords>() as u64;

/// The head of a step's guard values (`GuardHeader` in guard.wgsl); the rows of the rule's
/// scalars follow it.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GuardHeader {
    lo: u32,
    rows: u32,
    groups: u32,
    partials: u32,
    flags: u32,
    max_norm: f32,
    clip_value: f32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    scalar_words: u32,
    resolved_stride: u32,
}

const HEADER_BYTES: u64 = std::mem::size_of::<GuardHeader>() as u64;

/// Bytes of the head of what the finalize resolves (`GuardResolved` in src/gpu/glue.rs).
const RESOLVED_HEADER_BYTES: u64 = 32;

/// What the host has learnt of the device's step counts.
#[derive(Default)]
struct Learnt {
    /// The newest status mapped back, and the number of the step (counted from 1 over the
    /// optimizer's life) it followed.
    newest: Option<(u64, GradStatus)>,
    /// Readback buffers free for reuse.
    free: Vec<wgpu::Buffer>,
    /// Restores so far: a readback recorded before the newest tells of steps the restored
    /// state never took, and is ignored when it lands.
    restores: u64,
}

/// A step's guard values in a staging buffer, to copy into the values buffer.
pub(crate) struct Staged {
    staging: wgpu::Buffer,
    size: u64,
}

/// One dispatch of the reduction: a window of a span's grads, whose invocations write
/// partials from `partial_base`.
struct ReduceWindow {
    window: Window,
    partial_base: u32,
    chunks: u64,
}

/// The reduction kernel for one grads format.
struct ReduceKernel {
    dtype: Dtype,
    pipeline: wgpu::ComputePipeline,
}

/// What takes the reduction's partials.
#[derive(Clone, Copy)]
pub(crate) enum Then {
    /// The finalize: the step's norm, skip and scale.
    Finalize,
    /// A split guard's first half: the partials merged into the shard's one.
    Combine,
}

/// A guard's device side, owned by the engine.
pub(crate) struct DeviceGuard {
    context: GpuContext,
    pub settings: GradGuard,
    status: wgpu::Buffer,
    partials: wgpu::Buffer,
    partial_count: u32,
    /// The step's guard values: header, then rows; grown when a step needs more rows.
    values: wgpu::Buffer,
    /// What the update kernels read, written by the finalize (`resolved`) and copied into a
    /// uniform (`uniform`) between the passes: the step's grad factors and skip flag, then
    /// each group's scalars for the device's step count, `resolved_stride` bytes apart. A
    /// uniform, because a CPU adapter reads a storage value every invocation, and one read
    /// for all of them costs far less.
    resolved: wgpu::Buffer,
    uniform: wgpu::Buffer,
    resolved_stride: u64,
    scalar_bytes: u64,
    reduce_windows: Vec<ReduceWindow>,
    /// One slot per reduce window, 256-byte aligned: `ReduceWindow` in guard.wgsl.
    window_uniform: wgpu::Buffer,
    window_stride: u64,
    reduce_kernels: Vec<ReduceKernel>,
    reduce_layout: wgpu::BindGroupLayout,
    finalize: wgpu::ComputePipeline,
    finalize_group: wgpu::BindGroup,
    /// A shard's half of a split guard: merges its partials into `shard_partial`.
    combine: wgpu::ComputePipeline,
    combine_group: wgpu::BindGroup,
    shard_partial: wgpu::Buffer,
    /// The finalize bound to the caller's buffer of every shard's partial, and that buffer.
    gathered: Option<(wgpu::Buffer, wgpu::BindGroup)>,
    reduce_groups: Vec<Option<wgpu::BindGroup>>,
    /// Bound as the whole vectors of a window of fewer than four grads, which reads none.
    spare_vector: wgpu::Buffer,
    /// Statuses mapped back, filled in by the readbacks' callbacks.
    learnt: Arc<Mutex<Learnt>>,
    /// `(step, applied)`: after step `step` the device had applied `applied` steps, the
    /// newest such fact the host holds; `pending` holds, for each step recorded since,
    /// whether it could be skipped.
    known: (u64, u32),
    pending: VecDeque<bool>,
    /// `(step, scale)`: the host wrote the loss scale `scale` after step `step` was recorded
    /// (at the start, a switch of the scaler, a restore).
    written_scale: (u64, f32),
}

/// Creates a buffer of `size` bytes with `usage`.
fn buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: false,
    })
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The WGSL reading grads stored as `dtype`: `grad4(v)`, elements `4v..4v + 4` from the
/// binding of the window's whole vectors (one load of 16 or 8 bytes), and `grad_at(e)`,
/// element `e` from the binding of all of them.
fn grad_accessor(dtype: Dtype) -> String {
    match dtype {
        Dtype::F32 => "@group(0) @binding(1) var<storage, read> grads: array<vec4<f32>>;\n\
                       @group(0) @binding(6) var<storage, read> grads_all: array<f32>;\n\
                       fn grad4(v: u32) -> vec4<f32> { return grads[v]; }\n\
                       fn grad_at(e: u32) -> f32 { return grads_all[e]; }"
            .to_owned(),
        half => {
            let decode = match half {
                Dtype::F16 => "f16_value",
                _ => "bf16_value",
            };
            format!(
                "@group(0) @binding(1) var<storage, read> grads: array<vec2<u32>>;\n\
                 @group(0) @binding(6) var<storage, read> grads_all: array<u32>;\n\
                 fn grad4(v: u32) -> vec4<f32> {{\n\
                 \x20   let w = grads[v];\n\
                 \x20   return vec4<f32>({decode}(w.x & 0xffffu), {decode}(w.x >> 16u), \
                 {decode}(w.y & 0xffffu), {decode}(w.y >> 16u));\n\
                 }}\n\
                 fn grad_at(e: u32) -> f32 {{ return {decode}((grads_all[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu); }}"
            )
        }
    }
}

/// The reduction's dispatches over `spans`: windows of whole chunks, each invocation writing
/// one partial, numbered window after window; and how many partials that makes.
fn reduce_windows(context: &GpuContext, spans: &[Span]) -> (Vec<ReduceWindow>, u32) {
    let chunk = REDUCTION_CHUNK as u64;
    let mut partial_count = 0;
    let reduce_windows = windows(
        spans,
        context.dispatch_limits().window_elements,
        context.binding_elements(),
        |_| Grain {
            alignment: chunk,
            quantum: chunk,
        },
    )
    .into_iter()
    .map(|window| {
        let chunks = window.end.div_ceil(chunk);
        let base = partial_count;
        // One partial per invocation.
        partial_count += chunks as u32 * WORKGROUP_SIZE;
        ReduceWindow {
            window,
            partial_base: base,
            chunks,
        }
    })
    .collect();
    (reduce_windows, partial_count)
}

/// The uniform of every reduce window's slot (`ReduceWindow` in guard.wgsl: its first
/// partial and its end), one per uniform offset alignment, and that stride.
fn window_uniform(context: &GpuContext, reduce_windows: &[ReduceWindow]) -> (wgpu::Buffer, u64) {
    let window_stride = (context.limits().min_uniform_buffer_offset_alignment as u64).max(16);
    let mut slots = vec![0u8; (window_stride * reduce_windows.len() as u64) as usize];
    for (index, reduce) in reduce_windows.iter().enumerate() {
        let at = index * window_stride as usize;
        let words = [reduce.partial_base, reduce.window.end as u32];
        slots[at..at + 8].copy_from_slice(bytemuck::cast_slice(&words));
    }
    let uniform = context
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("fused-optim reduce windows"),
            contents: &slots,
            usage: wgpu::BufferUsages::UNIFORM,
        });
    (uniform, window_stride)
}

/// The status buffer, holding `initial`.
fn status_buffer(device: &wgpu::Device, initial: GradStatus) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("fused-optim grad status"),
        contents: bytemuck::bytes_of(&StatusWords::from(initial)),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
    })
}

/// The finalize's resolved values (`DeviceGuard::resolved`) for `groups` groups of
/// `scalar_bytes` scalars, the uniform they are copied into, and the stride of their rows
/// (the header, then each group's scalars): room for either at the uniform offset alignment,
/// so each row binds at its own offset.
fn resolved_buffers(
    context: &GpuContext,
    groups: usize,
    scalar_bytes: u64,
) -> (wgpu::Buffer, wgpu::Buffer, u64) {
    let alignment = context.limits().min_uniform_buffer_offset_alignment as u64;
    let stride =
        (RESOLVED_HEADER_BYTES.max(scalar_bytes.next_multiple_of(16))).next_multiple_of(alignment);
    let size = stride * (groups as u64 + 1);
    let device = context.device();
    let resolved = buffer(
        device,
        "fused-optim guard resolved",
        size,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let uniform = buffer(
        device,
        "fused-optim guard uniform",
        size,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    (resolved, uniform, stride)
}

/// The reduction's bind group layout: the window's slot, then the grads, status, values,
/// partials and all the grads.
fn reduce_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("fused-optim reduce"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
            storage_entry(1, true),
            storage_entry(2, false),
            storage_entry(3, true),
            storage_entry(4, false),
            storage_entry(6, true),
        ],
    })
}

/// A layout of storage `bindings`, each (binding, read-only).
fn bind_group_layout(
    device: &wgpu::Device,
    label: &str,
    bindings: &[(u32, bool)],
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, read_only)| storage_entry(binding, read_only))
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// One reduction kernel per grads format some window reads, in the windows' order.
fn reduce_kernels(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    reduce_windows: &[ReduceWindow],
    grads: &[Dtype],
) -> Vec<ReduceKernel> {
    let mut dtypes: Vec<Dtype> = Vec::new();
    for reduce in reduce_windows {
        let dtype = grads[reduce.window.target];
        if !dtypes.contains(&dtype) {
            dtypes.push(dtype);
        }
    }
    dtypes
        .into_iter()
        .map(|dtype| ReduceKernel {
            dtype,
            pipeline: guard_pipeline(
                device,
                layout,
                format!("{CODEC}\n{}\n{SOURCE}", grad_accessor(dtype)),
                "reduce",
            ),
        })
        .collect()
}

/// The guard's pipeline of `entry` in `source` over `layout` (the source dumped where
/// `DUMP_KERNELS` asks).
fn guard_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    source: String,
    entry: &str,
) -> wgpu::ComputePipeline {
    dump(&format!("grad-guard-{entry}"), &source);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fused-optim grad guard"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("fused-optim grad guard"),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[("WORKGROUP_SIZE", WORKGROUP_SIZE as f64)],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

impl DeviceGuard {
    /// The guard of an engine over `spans` in `groups` groups, whose targets' grads are
    /// stored as `grads` and whose rule's scalars take `scalar_bytes`, after `steps` steps.
    /// Runs inside the context's error scopes.
    pub fn new(
        context: &GpuContext,
        settings: GradGuard,
        spans: &[Span],
        grads: &[Dtype],
        (groups, scalar_bytes): (usize, u64),
        steps: u64,
    ) -> Self {
        let device = context.device();
        let (reduce_windows, partial_count) = reduce_windows(context, spans);
        let (window_uniform, window_stride) = window_uniform(context, &reduce_windows);
        let initial = GradStatus::initial(&settings, steps as u32);
        let status = status_buffer(device, initial);
        let partials = buffer(
            device,
            "fused-optim grad partials",
            partial_count as u64 * 16,
            wgpu::BufferUsages::STORAGE,
        );
        let spare_vector = buffer(
            device,
            "fused-optim grad guard spare vector",
            16,
            wgpu::BufferUsages::STORAGE,
        );
        let values = Self::values_buffer(device, HEADER_BYTES * 4);
        let (resolved, uniform, resolved_stride) = resolved_buffers(context, groups, scalar_bytes);
        let reduce_layout = reduce_layout(device);
        let reduce_kernels = reduce_kernels(device, &reduce_layout, &reduce_windows, grads);
        let finalize = guard_pipeline(
            device,
            &bind_group_layout(
                device,
                "fused-optim finalize",
                &[(2, false), (3, true), (4, false), (5, false)],
            ),
            format!("{}\n{SOURCE}", grad_accessor(Dtype::F32)),
            "finalize",
        );
        let finalize_group =
            Self::finalize_group(device, &finalize, [&status, &values, &partials, &resolved]);
        let combine = guard_pipeline(
            device,
            &bind_group_layout(
                device,
                "fused-optim combine",
                &[(3, true), (4, false), (7, false)],
            ),
            format!("{}\n{SOURCE}", grad_accessor(Dtype::F32)),
            "combine",
        );
        let shard_partial = buffer(
            device,
            "fused-optim shard grad partial",
            std::mem::size_of::<GradPartial>() as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let combine_group = Self::group(
            device,
            &combine,
            "fused-optim combine",
            &[(3, &values), (4, &partials), (7, &shard_partial)],
        );
        Self {
            context: context.clone(),
            settings,
            status,
            partials,
            partial_count,
            values,
            resolved,
            uniform,
            resolved_stride,
            scalar_bytes,
            reduce_groups: (0..reduce_windows.len()).map(|_| None).collect(),
            spare_vector,
            reduce_windows,
            window_uniform,
            window_stride,
            reduce_kernels,
            reduce_layout,
            finalize,
            finalize_group,
            combine,
            combine_group,
            shard_partial,
            gathered: None,
            learnt: Arc::default(),
            known: (steps, steps as u32),
            pending: VecDeque::new(),
            written_scale: (steps, initial.scale),
        }
    }

    fn values_buffer(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        buffer(
            device,
            "fused-optim guard values",
            size,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// The finalize's bind group over the status, values, partials and resolved buffers.
    fn finalize_group(
        device: &wgpu::Device,
        finalize: &wgpu::ComputePipeline,
        buffers: [&wgpu::Buffer; 4],
    ) -> wgpu::BindGroup {
        let [status, values, partials, resolved] = buffers;
        let entries = [(2, status), (3, values), (4, partials), (5, resolved)];
        Self::group(device, finalize, "fused-optim finalize", &entries)
    }

    /// A bind group of `pipeline` over whole buffers, by binding.
    fn group(
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|&(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Bytes of GPU memory the guard allocated.
    pub fn allocated_bytes(&self) -> u64 {
        [
            &self.status,
            &self.partials,
            &self.values,
            &self.window_uniform,
            &self.resolved,
            &self.uniform,
            &self.spare_vector,
            &self.shard_partial,
        ]
        .iter()
        .map(|buffer| buffer.size())
        .sum()
    }

    /// The status buffer (`GradStatus`; the loss scale is its first f32).
    pub fn status(&self) -> &wgpu::Buffer {
        &self.status
    }

    /// The update kernels' binding of the step's grad factors and skip flag.
    pub fn resolved_binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.uniform,
            offset: 0,
            size: wgpu::BufferSize::new(RESOLVED_HEADER_BYTES),
        }
    }

    /// The update kernels' binding of group `group`'s scalars for the step's count.
    pub fn scalars_binding(&self, group: usize) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.uniform,
            offset: self.resolved_stride * (group as u64 + 1),
            size: wgpu::BufferSize::new(self.scalar_bytes.next_multiple_of(16)),
        }
    }

    /// Bytes of grads one step reads again for the reduction.
    pub fn bytes_per_step(&self, grads: &[Dtype]) -> u64 {
        self.reduce_windows
            .iter()
            .map(|r| grads[r.window.target].buffer_bytes(r.window.len()))
            .sum()
    }

    /// Forgets what was learnt: after a restore, the device had applied `applied` steps
    /// after step `steps`, and holds the loss scale `scale`.
    pub fn restart(&mut self, steps: u64, applied: u32, scale: f32) {
        self.known = (steps, applied);
        self.written_scale = (steps, scale);
        self.pending.clear();
        let mut learnt = self.learnt.lock().unwrap();
        learnt.newest = None;
        learnt.restores += 1;
    }

    /// Sets the loss scale to `scale` and the growth tracker to 0 (a scaler switched on or
    /// off) after step `steps`, ahead of the next submission's commands.
    pub fn restart_scale(&mut self, steps: u64, scale: f32) {
        self.written_scale = (steps, scale);
        let words = [scale.to_bits(), 0];
        const _: () = assert!(std::mem::offset_of!(StatusWords, growth_tracker) == 4);
        self.context
            .queue()
            .write_buffer(&self.status, 0, bytemuck::cast_slice(&words));
    }

    /// The newest status the host has learnt without waiting, and the step it followed.
    pub fn newest(&self) -> Option<(u64, GradStatus)> {
        // Runs the callbacks of readbacks whose steps have completed.
        let _ = self.context.device().poll(wgpu::PollType::Poll);
        self.learnt.lock().unwrap().newest
    }

    /// The loss scale of the newest status the host has learnt, or the one it wrote since.
    pub fn scale(&self) -> f32 {
        let (written_after, written) = self.written_scale;
        match self.newest() {
            Some((step, status)) if step > written_after => status.scale,
            _ => written,
        }
    }

    /// The status now, once every submitted step has run. Waits for the GPU.
    pub async fn read_status(&self) -> Result<GradStatus> {
        let bytes = self.context.download_bytes_async(&self.status).await?;
        Ok(bytemuck::pod_read_unaligned::<StatusWords>(&bytes).into())
    }

    /// The step counts the device may hold before step `steps + 1`: `(lo, rows)` for counts
    /// `lo..lo + rows`.
    pub fn candidates(&mut self, steps: u64) -> (u64, u64) {
        if let Some((step, status)) = self.newest() {
            if step > self.known.0 {
                self.pending.drain(..(step - self.known.0) as usize);
                self.known = (step, status.applied);
            }
        }
        let certain = self.pending.iter().filter(|&&skippable| !skippable).count() as u64;
        let uncertain = self.pending.len() as u64 - certain;
        debug_assert_eq!(self.known.0 + self.pending.len() as u64, steps);
        (self.known.1 as u64 + certain, uncertain + 1)
    }

    /// Prepares the step's guard values (`rows` of scalars from step count `lo`, for
    /// `groups` groups) in a staging buffer, growing the values buffer where they need more
    /// room (the reduction and the finalize are bound to it again). Records nothing:
    /// [`DeviceGuard::record_stage`] copies them once nothing else can fail.
    /// With `gathered`, the finalize merges that many partials of the caller's (every shard's)
    /// rather than the reduction's.
    pub fn stage(
        &mut self,
        (lo, rows): (u64, u64),
        groups: usize,
        scalars: &[u8],
        gathered: Option<u32>,
    ) -> Result<Staged> {
        let settings = &self.settings;
        let scaler = settings.scaler.filter(|s| s.enabled);
        let clip = settings.clip_norm;
        let flags = scaler.is_some() as u32
            | (clip.is_some() as u32) << 1
            | (clip.is_some_and(|c| c.norm_type == NormType::Inf) as u32) << 2;
        let header = GuardHeader {
            lo: lo as u32,
            rows: rows as u32,
            groups: groups as u32,
            partials: gathered.unwrap_or(self.partial_count),
            flags,
            max_norm: clip.map_or(0.0, |c| c.max_norm),
            clip_value: settings.value_bound(),
            growth_factor: scaler.map_or(1.0, |s| s.growth_factor),
            backoff_factor: scaler.map_or(1.0, |s| s.backoff_factor),
            growth_interval: scaler.map_or(0, |s| s.growth_interval),
            scalar_words: (self.scalar_bytes / 4) as u32,
            resolved_stride: (self.resolved_stride / 4) as u32,
        };
        let mut bytes = bytemuck::bytes_of(&header).to_vec();
        bytes.extend_from_slice(scalars);
        let size = bytes.len() as u64;
        let limit = self.context.limits().max_storage_buffer_binding_size;
        if size > limit {
            return Err(Error::BufferTooLarge {
                what: "the scalars of every step count the device may have reached (submit and \
                       let the device finish some steps to shorten it)",
                bytes: size,
                limit,
            });
        }
        let device = self.context.device().clone();
        let (staging, grown) = self.context.scoped("staging the guard's values", || {
            let grown = (size > self.values.size())
                .then(|| Self::values_buffer(&device, size.next_power_of_two()));
            let staging = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("fused-optim staged guard values"),
                contents: &bytes,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
            (staging, grown)
        })?;
        if let Some(values) = grown {
            self.finalize_group = Self::finalize_group(
                &device,
                &self.finalize,
                [&self.status, &values, &self.partials, &self.resolved],
            );
            self.combine_group = Self::group(
                &device,
                &self.combine,
                "fused-optim combine",
                &[(3, &values), (4, &self.partials), (7, &self.shard_partial)],
            );
            self.reduce_groups
                .iter_mut()
                .for_each(|group| *group = None);
            self.gathered = None;
            self.values = values;
        }
        Ok(Staged { staging, size })
    }

    /// Records the copy of the staged values into the values buffer, ahead of the step's
    /// passes.
    pub fn record_stage(&self, encoder: &mut wgpu::CommandEncoder, staged: Staged) {
        encoder.copy_buffer_to_buffer(&staged.staging, 0, &self.values, 0, staged.size);
    }

    /// Whether some reduction window has no bind group (after the values buffer grew).
    pub fn needs_binding(&self) -> bool {
        self.reduce_groups.iter().any(Option::is_none)
    }

    /// Makes the reduction's bind groups of every window of `stale` targets, and of any
    /// window without one, whose grads are `grads[target]` stored as `dtypes[target]`.
    pub fn bind(&mut self, grads: &[&wgpu::Buffer], dtypes: &[Dtype], stale: &[usize]) {
        let device = self.context.device();
        for (index, reduce) in self.reduce_windows.iter().enumerate() {
            let target = reduce.window.target;
            if !stale.contains(&target) && self.reduce_groups[index].is_some() {
                continue;
            }
            let first = reduce.window.origin + reduce.window.offset;
            let count = reduce.window.end;
            let (offset, size) = match dtypes[target] {
                Dtype::F32 => (first * 4, count * 4),
                _ => (first * 2, count.div_ceil(2) * 4),
            };
            // The whole vectors; a window of fewer than four elements reads none of them, and
            // binds the guard's own vector in their place.
            let vectors = count / 4 * 4 * dtypes[target].element_bytes();
            let whole = match vectors {
                0 => self.spare_vector.as_entire_buffer_binding(),
                _ => wgpu::BufferBinding {
                    buffer: grads[target],
                    offset,
                    size: wgpu::BufferSize::new(vectors),
                },
            };
            let entries = [
                (
                    0,
                    wgpu::BufferBinding {
                        buffer: &self.window_uniform,
                        offset: index as u64 * self.window_stride,
                        size: wgpu::BufferSize::new(16),
                    },
                ),
                (1, whole),
                (2, self.status.as_entire_buffer_binding()),
                (3, self.values.as_entire_buffer_binding()),
                (4, self.partials.as_entire_buffer_binding()),
                (
                    6,
                    wgpu::BufferBinding {
                        buffer: grads[target],
                        offset,
                        size: wgpu::BufferSize::new(size),
                    },
                ),
            ];
            let entries: Vec<wgpu::BindGroupEntry> = entries
                .into_iter()
                .map(|(binding, buffer)| wgpu::BindGroupEntry {
                    binding,
                    resource: wgpu::BindingResource::Buffer(buffer),
                })
                .collect();
            self.reduce_groups[index] =
                Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fused-optim reduce"),
                    layout: &self.reduce_layout,
                    entries: &entries,
                }));
        }
    }

    /// After the pass of the reduction and the finalize: the copy of what they resolved into
    /// the uniform the update kernels read.
    pub fn record_resolved_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.uniform, 0, self.uniform.size());
    }

    /// Records the reduction into `pass`, then what takes its partials.
    pub fn record_reduction(
        &self,
        pass: &mut wgpu::ComputePass,
        dtypes: &[Dtype],
        workgroups_per_dimension: u32,
        then: Then,
    ) {
        self.record_reduce(pass, dtypes, workgroups_per_dimension);
        let (pipeline, group) = match then {
            Then::Finalize => (&self.finalize, &self.finalize_group),
            Then::Combine => (&self.combine, &self.combine_group),
        };
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// After a reduction's pass with [`Then::Combine`]: copies the shard's partial into
    /// `out` at byte `offset`.
    pub fn record_partial_copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        out: &wgpu::Buffer,
        offset: u64,
    ) {
        let size = self.shard_partial.size();
        encoder.copy_buffer_to_buffer(&self.shard_partial, 0, out, offset, size);
    }

    /// Binds the finalize to `gathered`, the caller's buffer of every shard's partial.
    pub fn bind_gathered(&mut self, gathered: &wgpu::Buffer) {
        if matches!(&self.gathered, Some((bound, _)) if bound == gathered) {
            return;
        }
        let group = Self::finalize_group(
            self.context.device(),
            &self.finalize,
            [&self.status, &self.values, gathered, &self.resolved],
        );
        self.gathered = Some((gathered.clone(), group));
    }

    /// Records the finalize over the gathered partials (a split guard's second half).
    pub fn record_gathered_finalize(&self, pass: &mut wgpu::ComputePass) {
        let (_, group) = self.gathered.as_ref().expect("bound before recording");
        pass.set_pipeline(&self.finalize);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Records the reduction's dispatches, one per window of the grads.
    fn record_reduce(
        &self,
        pass: &mut wgpu::ComputePass,
        dtypes: &[Dtype],
        workgroups_per_dimension: u32,
    ) {
        for (index, reduce) in self.reduce_windows.iter().enumerate() {
            let dtype = dtypes[reduce.window.target];
            let kernel = self
                .reduce_kernels
                .iter()
                .find(|k| k.dtype == dtype)
                .expect("a kernel per grads format");
            pass.set_pipeline(&kernel.pipeline);
            let group = self.reduce_groups[index].as_ref().expect("bound above");
            pass.set_bind_group(0, group, &[]);
            let (x, y) = dispatch_grid(
                reduce.chunks * WORKGROUP_SIZE as u64,
                workgroups_per_dimension,
            );
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    /// A readback buffer for [`DeviceGuard::record_readback`], taken before anything is
    /// recorded so that nothing fails after.
    pub fn readback_slot(&self) -> Result<wgpu::Buffer> {
        let free = self.learnt.lock().unwrap().free.pop();
        match free {
            Some(slot) => Ok(slot),
            None => self.context.scoped("allocating a status readback", || {
                buffer(
                    self.context.device(),
                    "fused-optim grad status readback",
                    STATUS_BYTES,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )
            }),
        }
    }

    /// After step `step`'s pass: copies the status into `slot`, mapped once the encoder's
    /// submission completes, so that a later step learns the device's step count.
    pub fn record_readback(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        slot: wgpu::Buffer,
        step: u64,
    ) {
        encoder.copy_buffer_to_buffer(&self.status, 0, &slot, 0, STATUS_BYTES);
        let learnt = Arc::clone(&self.learnt);
        let restores = learnt.lock().unwrap().restores;
        let mapped = slot.clone();
        encoder.map_buffer_on_submit(&slot, wgpu::MapMode::Read, .., move |result| {
            if result.is_err() {
                return;
            }
            let status: Option<GradStatus> = match mapped.slice(..).get_mapped_range() {
                Ok(view) => Some(bytemuck::pod_read_unaligned::<StatusWords>(&view).into()),
                Err(_) => None,
            };
            mapped.unmap();
            let Some(status) = status else { return };
            let mut learnt = learnt.lock().unwrap();
            let current = learnt.restores == restores;
            if current && learnt.newest.is_none_or(|(newest, _)| newest < step) {
                learnt.newest = Some((step, status));
            }
            learnt.free.push(mapped);
        });
        self.pending.push_back(self.settings.skips());
    }
}
