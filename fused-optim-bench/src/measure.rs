//! The measurements behind `fused-optim bench` and the criterion benches: each rule's fused step
//! timed beside its floor (the roofline rule moving the same bytes), its unfused chain, the CPU
//! twin and the adapter's copy bandwidth, all on the same adapter, sizes and data.

use std::time::{Duration, Instant};

use serde::Serialize;
use wgpu::util::DeviceExt;

use fused_optim::baseline::{Roofline, UnfusedChain};
use fused_optim::tooling::{bytes_per_step, visit_rules, RegisteredRule, RuleVisitor, Unfused};
use fused_optim::{
    Adam, ClipGradNorm, CpuOptimizer, Error, GpuContext, GradGuard, GradScaler, Optimizer,
    ParamGroup, ParamSet, Precision, Result, UpdateRule,
};

/// Small non-zero values every bench buffer starts from.
pub fn pattern(len: usize) -> Vec<f32> {
    (0..len).map(|i| 1e-3 * ((i % 997) as f32 + 1.0)).collect()
}

/// Runs `step` `steps` times after the GPU is idle and waits for the last: wall-clock time
/// per step, submission overhead included.
pub fn time_steps(
    gpu: &GpuContext,
    steps: u32,
    mut step: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    gpu.wait()?;
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    gpu.wait()?;
    Ok(start.elapsed() / steps.max(1))
}

/// The 148 tensors of a 12-layer GPT-2 of the given width, by their Hugging Face names; width
/// 768 is GPT-2 small (124,439,808 parameters), the shape of a real model's parameter set.
pub fn gpt2_tensors(width: usize) -> Vec<(String, usize)> {
    let (vocab, context) = (50_257, 1024);
    let mut tensors = vec![
        ("wte.weight".to_owned(), vocab * width),
        ("wpe.weight".to_owned(), context * width),
    ];
    for layer in 0..12 {
        for (name, len) in [
            ("ln_1.weight", width),
            ("ln_1.bias", width),
            ("attn.c_attn.weight", width * 3 * width),
            ("attn.c_attn.bias", 3 * width),
            ("attn.c_proj.weight", width * width),
            ("attn.c_proj.bias", width),
            ("ln_2.weight", width),
            ("ln_2.bias", width),
            ("mlp.c_fc.weight", width * 4 * width),
            ("mlp.c_fc.bias", 4 * width),
            ("mlp.c_proj.weight", 4 * width * width),
            ("mlp.c_proj.bias", width),
        ] {
            tensors.push((format!("h.{layer}.{name}"), len));
        }
    }
    tensors.push(("ln_f.weight".to_owned(), width));
    tensors.push(("ln_f.bias".to_owned(), width));
    tensors
}

/// GPT-2's usual two parameter groups: the matrices with `decayed` (weight decay), biases and
/// layer norms with `rest` (none).
pub fn gpt2_groups<R>(tensors: &[(String, usize)], decayed: R, rest: R) -> Vec<ParamGroup<R>> {
    let decays = |name: &str| name.ends_with(".weight") && !name.contains("ln_");
    let names = |decay: bool| {
        tensors
            .iter()
            .filter(move |(name, _)| decays(name) == decay)
            .map(|(name, _)| name.clone())
    };
    vec![
        ParamGroup::new(decayed, names(true)),
        ParamGroup::new(rest, names(false)),
    ]
}

/// Buffers are rotated until the sets stepped in turn span at least this much, so a small
/// working set is not served from a cache between steps (GPU L2 and last-level caches are
/// tens to a few hundred MiB).
const ROTATION_BYTES: u64 = 512 << 20;
const MAX_ROTATION: usize = 8;

/// How many steps [`measure`] takes of each kernel.
#[derive(Clone, Copy, Debug)]
pub struct Repetitions {
    /// Untimed GPU steps before timing.
    pub warmup: u32,
    /// Timed GPU steps: the samples of the median and spread.
    pub steps: u32,
    /// Timed CPU twin steps (0 skips the twin).
    pub cpu_steps: u32,
    /// Also time the first of this many shards of the parameters (below 2: none).
    pub shards: usize,
}

/// What a time was measured with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// GPU timestamps written at the start and end of each step's compute pass.
    Timestamps,
    /// Wall clock around submit and wait, where the adapter has no timestamp queries.
    WallClock,
}

impl Clock {
    pub fn of(gpu: &GpuContext) -> Self {
        match gpu
            .device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            true => Clock::Timestamps,
            false => Clock::WallClock,
        }
    }
}

/// Per-step times of one kernel, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Stats {
    fn of(mut times: Vec<f64>) -> Self {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => times[n / 2],
            _ => (times[n / 2 - 1] + times[n / 2]) / 2.0,
        };
        Self {
            median_ms: median,
            min_ms: times.first().copied().unwrap_or(f64::NAN),
            max_ms: times.last().copied().unwrap_or(f64::NAN),
            samples: n,
        }
    }

    /// (max - min) / median, as a percentage.
    pub fn spread_percent(&self) -> f64 {
        100.0 * (self.max_ms - self.min_ms) / self.median_ms
    }
}

/// Reads GPU timestamps written around each timed step.
struct Timestamps {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
}

impl Timestamps {
    fn new(gpu: &GpuContext, steps: u32) -> Result<Self> {
        let capacity = 2 * steps.max(1);
        gpu.scoped("creating timestamp queries", || Self {
            queries: gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            }),
            resolved: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps resolved"),
                size: capacity as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
        })
    }

    fn writes(&self, step: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * step),
            end_of_pass_write_index: Some(2 * step + 1),
        }
    }

    /// Milliseconds between each step's two timestamps.
    fn read(&self, gpu: &GpuContext, steps: u32) -> Result<Vec<f64>> {
        gpu.scoped("resolving timestamps", || {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            encoder.resolve_query_set(&self.queries, 0..2 * steps, &self.resolved, 0);
            gpu.queue().submit([encoder.finish()]);
        })?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.download(&self.resolved)?);
        let period_ns = gpu.queue().get_timestamp_period() as f64;
        Ok(ticks[..2 * steps as usize]
            .chunks(2)
            .map(|pair| pair[1].wrapping_sub(pair[0]) as f64 * period_ns / 1e6)
            .collect())
    }
}

/// Times `submit(set, timestamps)` after `warmup` untimed calls: one sample per step, from GPU
/// timestamps around its pass where the adapter has them, else from the wall clock around
/// submit and wait. `set` cycles through `sets` buffer sets.
fn time_kernel(
    gpu: &GpuContext,
    repetitions: Repetitions,
    sets: usize,
    mut submit: impl FnMut(usize, Option<wgpu::ComputePassTimestampWrites>) -> Result<()>,
) -> Result<Stats> {
    for step in 0..repetitions.warmup as usize {
        submit(step % sets, None)?;
    }
    gpu.wait()?;
    let steps = repetitions.steps.max(1);
    let times = match Clock::of(gpu) {
        Clock::Timestamps => {
            let timestamps = Timestamps::new(gpu, steps)?;
            for step in 0..steps {
                submit(step as usize % sets, Some(timestamps.writes(step)))?;
            }
            timestamps.read(gpu, steps)?
        }
        Clock::WallClock => (0..steps as usize)
            .map(|step| {
                let start = Instant::now();
                submit(step % sets, None)?;
                gpu.wait()?;
                Ok(start.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(Stats::of(times))
}

/// Caller-side buffers for `sets` rotated (params, grads) pairs of `len` elements.
fn buffer_sets(
    gpu: &GpuContext,
    len: usize,
    sets: usize,
    precision: &Precision,
) -> Result<Vec<(wgpu::Buffer, wgpu::Buffer)>> {
    let values = pattern(len);
    let (params, grads) = (
        precision.params.encode(&values),
        precision.grads.encode(&values),
    );
    (0..sets)
        .map(|_| {
            Ok((
                gpu.upload_bytes("bench params", &params)?,
                gpu.upload_bytes("bench grads", &grads)?,
            ))
        })
        .collect()
}

/// How many buffer sets to rotate through for a working set of `bytes`.
fn rotation(bytes: u64) -> usize {
    (ROTATION_BYTES.div_ceil(bytes.max(1)) as usize).clamp(1, MAX_ROTATION)
}

/// Times fused steps of `rule` over `len` elements, under `guard` where given, rotating
/// buffer sets.
fn time_fused<R: UpdateRule>(
    gpu: &GpuContext,
    rule: &R,
    precision: &Precision,
    guard: Option<GradGuard>,
    len: usize,
    repetitions: Repetitions,
) -> Result<(Stats, u64, usize, u64)> {
    let optimizer = || {
        let optimizer = Optimizer::with_precision(gpu, rule.clone(), precision.clone(), len)?;
        match guard {
            Some(guard) => optimizer.with_grad_guard(guard),
            None => Ok(optimizer),
        }
    };
    let first = optimizer()?;
    let (bytes, stored) = (first.bytes_per_step(), first.state_bytes());
    let sets = rotation(bytes);
    let buffers = buffer_sets(gpu, len, sets, precision)?;
    let mut optimizers = vec![first];
    for _ in 1..sets {
        optimizers.push(optimizer()?);
    }
    let dispatches = optimizers[0].dispatches_per_step();
    let stats = time_kernel(gpu, repetitions, sets, |set, timestamps| {
        let (params, grads) = &buffers[set];
        optimizers[set].step_timed(params, grads, timestamps)
    })?;
    Ok((stats, bytes, dispatches, stored))
}

/// Times the step of the first of `shards` shards of a one-tensor set of `len` parameters
/// stored as `precision`, rotating buffer sets.
fn time_shard<R: UpdateRule>(
    gpu: &GpuContext,
    rule: &R,
    precision: &Precision,
    (len, shards): (usize, usize),
    repetitions: Repetitions,
) -> Result<Stats> {
    let tensors = [("params", len)];
    let shard = || {
        let group =
            || vec![ParamGroup::new(rule.clone(), ["params"]).with_precision(precision.clone())];
        let layout = ParamSet::new(gpu, &tensors, group())?.layout().clone();
        ParamSet::shard(gpu, &tensors, group(), layout.shards(shards)?[0].clone())
    };
    let first = shard()?;
    let len = first.layout().len() as usize;
    let sets = rotation(first.bytes_per_step());
    let buffers = buffer_sets(gpu, len, sets, precision)?;
    let mut sets_of = vec![first];
    for _ in 1..sets {
        sets_of.push(shard()?);
    }
    time_kernel(gpu, repetitions, sets, |set, timestamps| {
        let (params, grads) = &buffers[set];
        sets_of[set].step_timed(params, grads, timestamps)
    })
}

/// Times the unfused chain of `rule` the same way.
fn time_unfused<R: Unfused>(
    gpu: &GpuContext,
    rule: &R,
    len: usize,
    bytes_per_step: u64,
    repetitions: Repetitions,
) -> Result<(Stats, usize, u64)> {
    let sets = rotation(bytes_per_step);
    let buffers = buffer_sets(gpu, len, sets, &Precision::default())?;
    let mut chains = (0..sets)
        .map(|_| UnfusedChain::new(gpu, rule.clone(), len))
        .collect::<Result<Vec<_>>>()?;
    let stats = time_kernel(gpu, repetitions, sets, |set, timestamps| {
        let (params, grads) = &buffers[set];
        chains[set].step_timed(params, grads, timestamps)
    })?;
    Ok((
        stats,
        chains[0].dispatches_per_step(),
        chains[0].bytes_per_step(),
    ))
}

/// The CPU twin's median step time in milliseconds over `steps` steps (NaN for 0 steps).
fn time_cpu<R: UpdateRule>(rule: &R, len: usize, steps: u32) -> Result<f64> {
    let mut twin = CpuOptimizer::new(rule.clone(), len)?;
    let (mut params, grads) = (pattern(len), pattern(len));
    let times = (0..steps)
        .map(|_| {
            let start = Instant::now();
            twin.step(&mut params, &grads)?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Stats::of(times).median_ms)
}

/// The adapter's `copy_buffer_to_buffer` bandwidth in GB/s between two buffers of `bytes`,
/// counting the bytes read and written: the median of five submits of eight copies each,
/// after a warm-up submit.
pub fn copy_bandwidth(gpu: &GpuContext, bytes: u64) -> Result<f64> {
    const COPIES: u32 = 8;
    let device = gpu.device();
    let [source, destination] = gpu.scoped("allocating copy buffers", || {
        ["copy source", "copy destination"].map(|label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    })?;
    // Milliseconds per submit.
    let batch = || -> Result<f64> {
        let start = Instant::now();
        gpu.scoped("a bandwidth copy", || {
            let mut encoder = device.create_command_encoder(&Default::default());
            for _ in 0..COPIES {
                encoder.copy_buffer_to_buffer(&source, 0, &destination, 0, bytes);
            }
            gpu.queue().submit([encoder.finish()]);
        })?;
        gpu.wait()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    batch()?;
    let times = (0..5).map(|_| batch()).collect::<Result<Vec<_>>>()?;
    let per_submit_ms = Stats::of(times).median_ms;
    Ok(2.0 * (bytes * COPIES as u64) as f64 / per_submit_ms / 1e6)
}

/// One rule at one size, measured in one run on one adapter.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub rule: &'static str,
    /// The storage formats, in `Precision`'s short form (`f32`, `bf16,master=remainder`, ...).
    pub precision: String,
    /// The grad guard the step ran under (`none`, `scale`, `clip`, `scale+clip`).
    pub guard: String,
    pub params: usize,
    /// Bytes the optimizer stores per parameter (master and state, `state_bytes() / len`).
    pub stored_bytes_per_param: f64,
    /// Bytes the rule must move per step (see BENCHMARKS.md).
    pub bytes_per_step: u64,
    pub fused: Stats,
    pub fused_dispatches: usize,
    /// The roofline rule moving the same bytes in the same formats (through the same codecs).
    pub roofline: Stats,
    /// The byte floor: the f32 roofline, plain vec4 loads and stores with no decoding, over
    /// as many elements as move the same bytes. A compact format is held to it: the codec's
    /// cost counts against the format.
    pub byte_floor: Stats,
    pub unfused: Stats,
    pub unfused_dispatches: usize,
    /// Bytes the unfused chain moves per step: every operation reads and writes whole tensors.
    pub unfused_bytes_per_step: u64,
    /// The CPU twin's median step (NaN when skipped).
    pub cpu_ms: f64,
    /// How many shards the parameters were cut into for `shard` (0: not measured).
    pub shards: usize,
    /// The step of the first shard alone (a `ParamSet::shard` of a one-tensor set), in the
    /// same precision under no guard.
    pub shard: Stats,
    /// `copy_buffer_to_buffer` bandwidth measured at this size, in GB/s.
    pub copy_gb_per_s: f64,
}

impl Measurement {
    /// The first shard's median step over the whole step's (NaN when not measured).
    pub fn shard_ratio(&self) -> f64 {
        self.shard.median_ms / self.fused.median_ms
    }

    /// Bytes the rule must move per step over the fused median, in GB/s (10^9 bytes).
    pub fn gigabytes_per_second(&self) -> f64 {
        self.bytes_per_step as f64 / self.fused.median_ms / 1e6
    }

    /// The roofline's effective bandwidth over the same bytes.
    pub fn roofline_gigabytes_per_second(&self) -> f64 {
        self.bytes_per_step as f64 / self.roofline.median_ms / 1e6
    }

    /// Fused median over the roofline's: 1.0 is the floor.
    pub fn roofline_ratio(&self) -> f64 {
        self.fused.median_ms / self.roofline.median_ms
    }

    /// Fused median over the byte floor's.
    pub fn byte_floor_ratio(&self) -> f64 {
        self.fused.median_ms / self.byte_floor.median_ms
    }

    /// The time the rule's bytes take at the copy bandwidth: the copy engine's floor, beside
    /// the roofline kernel's.
    pub fn copy_floor_ms(&self) -> f64 {
        self.bytes_per_step as f64 / self.copy_gb_per_s / 1e6
    }

    /// Fused median over the copy engine's floor.
    pub fn copy_ratio(&self) -> f64 {
        self.fused.median_ms / self.copy_floor_ms()
    }

    /// How many times faster the fused step is than the unfused chain.
    pub fn unfused_speedup(&self) -> f64 {
        self.unfused.median_ms / self.fused.median_ms
    }

    /// How many times faster the fused step is than the CPU twin.
    pub fn cpu_speedup(&self) -> f64 {
        self.cpu_ms / self.fused.median_ms
    }

    /// Effective bandwidth as a share of the copy bandwidth, in percent.
    pub fn copy_percent(&self) -> f64 {
        100.0 * self.gigabytes_per_second() / self.copy_gb_per_s
    }
}

/// Measures `rule` over `len` parameters stored as `precision` under `guard`: fused steps, the
/// roofline with as many state buffers in the same precision under the same guard (the same
/// bytes through the same codecs and reduction, no update arithmetic), and for f32 without a
/// guard the unfused chain (each after a warm-up, rotating buffers where they would fit in a
/// cache) and the CPU twin. `copy_gb_per_s` is the copy bandwidth measured at this size.
pub fn measure<R: Unfused>(
    gpu: &GpuContext,
    rule: R,
    len: usize,
    repetitions: Repetitions,
    copy_gb_per_s: f64,
    (precision, guard): (&Precision, &Guard),
) -> Result<Measurement> {
    let (fused, bytes_per_step, fused_dispatches, stored) =
        time_fused(gpu, &rule, precision, guard.settings, len, repetitions)?;
    let (floor_rule, floor_precision) = Roofline::format_floor(&rule, precision);
    let (roofline, _, _, _) = time_fused(
        gpu,
        &floor_rule,
        &floor_precision,
        guard.settings,
        len,
        repetitions,
    )?;
    let f32_only = *precision == Precision::default() && guard.settings.is_none();
    let byte_floor = match f32_only {
        true => roofline.clone(),
        false => {
            let floor_len = floor_rule.byte_floor_len(bytes_per_step);
            let floor = time_fused(
                gpu,
                &floor_rule,
                &Precision::default(),
                None,
                floor_len,
                repetitions,
            )?;
            floor.0
        }
    };
    let (unfused, unfused_dispatches, unfused_bytes_per_step) = match f32_only {
        true => time_unfused(gpu, &rule, len, bytes_per_step, repetitions)?,
        false => (Stats::of(Vec::new()), 0, 0),
    };
    Ok(Measurement {
        rule: rule.name(),
        precision: precision.to_string(),
        guard: guard.name.to_owned(),
        params: len,
        stored_bytes_per_param: stored as f64 / len as f64,
        bytes_per_step,
        fused,
        fused_dispatches,
        roofline,
        byte_floor,
        unfused,
        unfused_dispatches,
        unfused_bytes_per_step,
        cpu_ms: match repetitions.cpu_steps {
            _ if !f32_only => f64::NAN,
            0 => f64::NAN,
            steps => time_cpu(&rule, len, steps)?,
        },
        shards: repetitions.shards,
        shard: match repetitions.shards {
            0 | 1 => Stats::of(Vec::new()),
            _ if guard.settings.is_some() => Stats::of(Vec::new()),
            shards => time_shard(gpu, &rule, precision, (len, shards), repetitions)?,
        },
        copy_gb_per_s,
    })
}

/// Hand-written kernels outside fused-optim's prelude, engine and windows, as a user would
/// write them in raw wgpu: `adam`, a plain vec4 Adam with its scalars in a uniform, and
/// `stream`, a vec4 kernel moving Adam's 28 bytes per parameter (params, grads and two states
/// read; params and two states written) with no update arithmetic. One vec4 per invocation,
/// 256 invocations per workgroup, one dispatch. The yardsticks the fused step and its roofline
/// are held to (BENCHMARKS.md).
const HAND_WRITTEN: &str = r#"
struct Scalars {
    step_size: f32, beta1: f32, one_minus_beta1: f32, beta2: f32,
    one_minus_beta2: f32, bias_correction2_sqrt: f32, eps: f32, n: u32,
}
@group(0) @binding(0) var<uniform> s: Scalars;
@group(0) @binding(1) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;

fn index(wg: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * 256u + local;
}

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = index(wg, groups, local);
    if i >= s.n { return; }
    let gi = g[i];
    let mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    let vi = s.beta2 * v[i] + s.one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - s.step_size * (mi / (sqrt(vi) / s.bias_correction2_sqrt + s.eps));
}

@compute @workgroup_size(256)
fn stream(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
          @builtin(local_invocation_index) local: u32) {
    let i = index(wg, groups, local);
    if i >= s.n { return; }
    let pi = p[i];
    p[i] = pi + g[i];
    m[i] = m[i] + pi;
    v[i] = v[i] + pi;
}
"#;

/// Median step times of the [hand-written kernels](HAND_WRITTEN) at one size.
#[derive(Clone, Debug, Serialize)]
pub struct HandWritten {
    /// Parameters per step.
    pub params: usize,
    /// The plain vec4 Adam.
    pub adam: Stats,
    /// The vec4 kernel moving Adam's bytes with no arithmetic.
    pub stream: Stats,
}

/// Times the hand-written kernels over `len` parameters (a multiple of 4), with the same
/// warm-up, timing and buffer rotation as [`measure`].
pub fn measure_hand_written(
    gpu: &GpuContext,
    len: usize,
    repetitions: Repetitions,
) -> Result<HandWritten> {
    if !len.is_multiple_of(4) {
        return Err(Error::InvalidConfig {
            field: "len",
            value: len as f64,
            reason: "the hand-written kernels take whole vec4s",
        });
    }
    // One dispatch binding whole buffers, with no windows: the simple kernel a user writes.
    let (bytes, limit) = (len as u64 * 4, gpu.limits().max_storage_buffer_binding_size);
    if bytes > limit {
        return Err(Error::Unsupported {
            what: "the hand-written kernels at this size",
            detail: format!(
                "they bind each {bytes}-byte buffer whole, past max_storage_buffer_binding_size \
                 ({limit} bytes), and have no windows"
            ),
        });
    }
    let device = gpu.device();
    let sets = rotation(bytes_per_step(len as u64, 2));
    let module = gpu.scoped("compiling the hand-written kernels", || {
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("hand-written"),
            source: wgpu::ShaderSource::Wgsl(HAND_WRITTEN.into()),
        })
    })?;
    let pipelines = ["adam", "stream"].map(|entry| {
        gpu.scoped("building a hand-written pipeline", || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    });
    let [adam, stream] = pipelines;
    let (adam, stream) = (adam?, stream?);
    let s = Adam::default().scalars(1, &[]);
    let scalars = [
        s.step_size,
        s.beta1,
        s.one_minus_beta1,
        s.beta2,
        s.one_minus_beta2,
        s.bias_correction2_sqrt,
        s.eps,
    ];
    let mut uniform: Vec<u8> = bytemuck::cast_slice(&scalars).to_vec();
    uniform.extend_from_slice(&((len / 4) as u32).to_le_bytes());
    let values = pattern(len);
    let bind_groups = |pipeline: &wgpu::ComputePipeline| -> Result<Vec<wgpu::BindGroup>> {
        let uniform = gpu.scoped("uploading hand-written scalars", || {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("hand-written scalars"),
                contents: &uniform,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        })?;
        (0..sets)
            .map(|_| {
                let buffers = ["p", "g", "m", "v"]
                    .iter()
                    .map(|label| gpu.upload(label, &values))
                    .collect::<Result<Vec<_>>>()?;
                gpu.scoped("binding the hand-written kernels", || {
                    let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(&uniform)
                        .chain(&buffers)
                        .zip(0..)
                        .map(|(buffer, binding)| wgpu::BindGroupEntry {
                            binding,
                            resource: buffer.as_entire_binding(),
                        })
                        .collect();
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("hand-written"),
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
                })
            })
            .collect()
    };
    let (x, y) = fused_optim::tooling::dispatch_grid(
        len as u64 / 4,
        gpu.dispatch_limits().workgroups_per_dimension,
    );
    let time = |pipeline: &wgpu::ComputePipeline| -> Result<Stats> {
        let groups = bind_groups(pipeline)?;
        time_kernel(gpu, repetitions, sets, |set, timestamps| {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("hand-written"),
                    timestamp_writes: timestamps,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &groups[set], &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            gpu.queue().submit([encoder.finish()]);
            Ok(())
        })
    };
    Ok(HandWritten {
        params: len,
        adam: time(&adam)?,
        stream: time(&stream)?,
    })
}

/// A grad guard the sweep measures under, by its `--guard` name.
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    pub name: &'static str,
    pub settings: Option<GradGuard>,
}

impl Guard {
    /// The `--guard` names: `none`; `scale`, GradScaler's defaults; `clip`, clip_grad_norm_ to
    /// 1.0; `scale+clip`, both.
    pub fn parse(name: &str) -> std::result::Result<Guard, String> {
        let scale = GradGuard::new().with_scaler(GradScaler::default());
        let clip = ClipGradNorm::new(1.0);
        let (name, settings) = match name {
            "none" => return Ok(Guard::NONE),
            "scale" => ("scale", scale),
            "clip" => ("clip", GradGuard::new().with_clip_norm(clip)),
            "scale+clip" => ("scale+clip", scale.with_clip_norm(clip)),
            other => {
                return Err(format!(
                    "unknown --guard `{other}`: none, scale, clip or scale+clip"
                ))
            }
        };
        Ok(Guard {
            name,
            settings: Some(settings),
        })
    }

    /// No guard: the plain step.
    pub const NONE: Guard = Guard {
        name: "none",
        settings: None,
    };
}

/// Measures one rule configuration at a size, given the copy bandwidth measured there.
type MeasureFn =
    dyn Fn(&GpuContext, usize, Repetitions, f64, (&Precision, &Guard)) -> Result<Measurement>;

/// A rule configuration the sweep measures: one of a registered rule's variants.
pub struct Variant {
    name: &'static str,
    measure: Box<MeasureFn>,
}

impl Variant {
    /// Every registered rule's variants ([`RegisteredRule::variants`]: PyTorch's defaults and
    /// the variants that change what a step moves or computes), in registry order.
    pub fn all() -> Vec<Variant> {
        struct Variants(Vec<Variant>);
        impl RuleVisitor for Variants {
            fn visit<R: RegisteredRule>(&mut self) {
                for rule in R::variants() {
                    self.0.push(Variant {
                        name: rule.name(),
                        measure: Box::new(move |gpu, len, repetitions, copy_gb_per_s, setup| {
                            measure(gpu, rule.clone(), len, repetitions, copy_gb_per_s, setup)
                        }),
                    });
                }
            }
        }
        let mut variants = Variants(Vec::new());
        visit_rules(&mut variants);
        variants.0
    }

    /// The variant's name, as in the table (`adam`, `sgd-nesterov`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Measures the variant over `len` parameters stored as `precision` under `guard` (see
    /// [`measure`]).
    pub fn measure(
        &self,
        gpu: &GpuContext,
        len: usize,
        repetitions: Repetitions,
        copy_gb_per_s: f64,
        setup: (&Precision, &Guard),
    ) -> Result<Measurement> {
        (self.measure)(gpu, len, repetitions, copy_gb_per_s, setup)
    }
}

/// Bytes of each buffer the copy-bandwidth measurement at `len` parameters uses: four
/// tensors' worth, the size of a rule's working set.
pub fn copy_bytes(len: usize) -> u64 {
    len as u64 * 16
}

/// Why a size is skipped on this adapter, if it is: a tensor, or the copy measurement's
/// buffers, past the largest buffer.
pub fn unfit(gpu: &GpuContext, len: usize) -> Option<String> {
    let bytes = copy_bytes(len);
    let limit = gpu.limits().max_buffer_size;
    (bytes > limit).then(|| {
        Error::BufferTooLarge {
            what: "the copy-bandwidth buffers at this size",
            bytes,
            limit,
        }
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median_and_range() {
        let odd = Stats::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((odd.median_ms, odd.min_ms, odd.max_ms), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).median_ms, 2.5);
        assert_eq!(odd.spread_percent(), 100.0);
    }

    #[test]
    fn small_working_sets_rotate_past_the_cache() {
        assert_eq!(rotation(ROTATION_BYTES), 1);
        assert_eq!(rotation(ROTATION_BYTES / 4), 4);
        assert_eq!(rotation(ROTATION_BYTES / 4 - 1), 5);
        assert_eq!(rotation(1), MAX_ROTATION);
    }
}
