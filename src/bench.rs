//! Timing of fused steps, shared by the CLI's `bench` and the criterion benches: the fused
//! kernel, the streaming floor it is measured against, the adapter's copy bandwidth and the CPU
//! twin, all on the same data sizes.

use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;

use crate::context::GpuContext;
use crate::error::Result;
use crate::kernel::{
    bytes_per_step, dispatch_grid, Kernel, StepHeader, UpdateRule, HEADER_BYTES, PRELUDE,
};
use crate::optimizer::{CpuOptimizer, Optimizer};
use crate::param_set::ParamGroup;

/// The roofline kernel's full WGSL: the rules' prelude plus shaders/roofline.wgsl.
pub fn roofline_source() -> String {
    format!("{PRELUDE}\n{}", include_str!("../shaders/roofline.wgsl"))
}

/// The roofline's `Step` uniform: the header, then its one-field `Scalars` rounded up to 16.
const ROOFLINE_UNIFORM_BYTES: u64 = HEADER_BYTES + 16;

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

/// Buffers and an optimizer ready to step.
pub struct Workload<R: UpdateRule> {
    pub optimizer: Optimizer<R>,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
}

impl<R: UpdateRule> Workload<R> {
    pub fn new(gpu: &GpuContext, rule: R, len: usize) -> Result<Self> {
        let values = pattern(len);
        Ok(Self {
            optimizer: Optimizer::new(gpu, rule, len)?,
            params: gpu.upload("bench params", &values)?,
            grads: gpu.upload("bench grads", &values)?,
        })
    }

    /// Submits `steps` steps back to back: wall-clock time per step.
    pub fn run(&mut self, gpu: &GpuContext, steps: u32) -> Result<Duration> {
        time_steps(gpu, steps, || {
            self.optimizer.step(&self.params, &self.grads)
        })
    }
}

/// The floor for a rule with `states` state buffers: one dispatch that moves exactly the bytes
/// the rule must move and computes nothing else (shaders/roofline.wgsl).
pub struct Roofline {
    kernel: Kernel,
    bind_group: wgpu::BindGroup,
    len: usize,
    states: usize,
    max_workgroups_per_dim: u32,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    pub state: Vec<wgpu::Buffer>,
}

impl Roofline {
    /// Most state buffers any rule keeps (Adam with amsgrad, centered RMSprop with momentum).
    pub const MAX_STATES: usize = 3;

    /// Buffers of `len` elements starting at [`pattern`]. `states` must be at most `MAX_STATES`.
    pub fn new(gpu: &GpuContext, len: usize, states: usize) -> Result<Self> {
        assert!(
            states <= Self::MAX_STATES,
            "the roofline kernel has {} state slots",
            Self::MAX_STATES
        );
        let device = gpu.device();
        let values = pattern(len);
        let params = gpu.upload("roofline params", &values)?;
        let grads = gpu.upload("roofline grads", &values)?;
        let state = (0..Self::MAX_STATES)
            .map(|slot| {
                gpu.upload(
                    "roofline state",
                    if slot < states { &values } else { &[0.0] },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let (kernel, bind_group) = gpu.scoped("building the roofline kernel", || {
            let kernel = Kernel::compile(
                device,
                "roofline",
                &roofline_source(),
                &[("STATES", states as f64)],
                ROOFLINE_UNIFORM_BYTES,
                Self::MAX_STATES as u32,
            );
            // No L2 term, and `Scalars` (unused) left zero.
            let header = StepHeader {
                begin: 0,
                end: len as u32,
                weight_decay: 0.0,
                pad: 0,
            };
            let mut step = bytemuck::bytes_of(&header).to_vec();
            step.resize(ROOFLINE_UNIFORM_BYTES as usize, 0);
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("roofline step"),
                contents: &step,
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let bind_group = kernel.bind_group(
                device,
                "roofline",
                uniform.as_entire_buffer_binding(),
                [&params, &grads]
                    .into_iter()
                    .chain(&state)
                    .map(wgpu::Buffer::as_entire_buffer_binding),
            );
            (kernel, bind_group)
        })?;
        Ok(Self {
            kernel,
            bind_group,
            len,
            states,
            max_workgroups_per_dim: gpu.limits().max_compute_workgroups_per_dimension,
            params,
            grads,
            state,
        })
    }

    /// The same byte count as [`Optimizer::bytes_per_step`] for a rule with as many states.
    pub fn bytes_per_step(&self) -> u64 {
        bytes_per_step(self.len as u64, self.states)
    }

    /// Records and submits one pass.
    pub fn step(&self, gpu: &GpuContext) -> Result<()> {
        gpu.scoped("a roofline pass", || {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.kernel.pipeline);
                pass.set_bind_group(0, &self.bind_group, &[0]);
                let (x, y) = dispatch_grid(self.len as u64, self.max_workgroups_per_dim);
                pass.dispatch_workgroups(x, y, 1);
            }
            gpu.queue().submit([encoder.finish()]);
        })
    }

    /// Submits `steps` passes back to back: wall-clock time per pass.
    pub fn run(&self, gpu: &GpuContext, steps: u32) -> Result<Duration> {
        time_steps(gpu, steps, || self.step(gpu))
    }
}

/// The adapter's `copy_buffer_to_buffer` bandwidth in GB/s over `bytes`-byte buffers, counting
/// the bytes read and written, after one warm-up copy.
pub fn copy_bandwidth(gpu: &GpuContext, bytes: u64, copies: u32) -> Result<f64> {
    let device = gpu.device();
    let [source, destination] = ["copy source", "copy destination"].map(|label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    });
    let copy = || {
        gpu.scoped("a bandwidth copy", || {
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&source, 0, &destination, 0, bytes);
            gpu.queue().submit([encoder.finish()]);
        })
    };
    time_steps(gpu, 1, copy)?;
    let per_copy = time_steps(gpu, copies, copy)?;
    Ok(2.0 * bytes as f64 / per_copy.as_secs_f64() / 1e9)
}

/// One rule timed on one adapter, beside its floor and its CPU twin.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub rule: &'static str,
    pub len: usize,
    pub bytes_per_step: u64,
    pub fused: Duration,
    pub roofline: Duration,
    pub cpu: Duration,
}

impl Measurement {
    /// Bytes the rule must move per step over the fused step's time, in GB/s (10^9 bytes).
    pub fn gigabytes_per_second(&self) -> f64 {
        self.bytes_per_step as f64 / self.fused.as_secs_f64() / 1e9
    }

    /// Fused time over the roofline's: 1.0 is the floor.
    pub fn roofline_ratio(&self) -> f64 {
        self.fused.as_secs_f64() / self.roofline.as_secs_f64()
    }

    /// How many times faster the fused step is than the CPU twin.
    pub fn cpu_speedup(&self) -> f64 {
        self.cpu.as_secs_f64() / self.fused.as_secs_f64()
    }
}

/// How many steps `measure` takes of each kernel.
#[derive(Clone, Copy, Debug)]
pub struct Repetitions {
    /// Untimed GPU steps before timing.
    pub warmup: u32,
    /// Timed GPU steps.
    pub steps: u32,
    /// Timed CPU twin steps.
    pub cpu_steps: u32,
}

/// Times `rule` over `len` parameters: warm-up then timed fused steps, the roofline for as
/// many state buffers the same way, and the CPU twin.
pub fn measure<R: UpdateRule>(
    gpu: &GpuContext,
    rule: R,
    len: usize,
    repetitions: Repetitions,
) -> Result<Measurement> {
    let Repetitions {
        warmup,
        steps,
        cpu_steps,
    } = repetitions;
    let name = rule.name();
    let (fused, bytes_per_step, states) = {
        let mut workload = Workload::new(gpu, rule.clone(), len)?;
        workload.run(gpu, warmup)?;
        let fused = workload.run(gpu, steps)?;
        let optimizer = &workload.optimizer;
        (
            fused,
            optimizer.bytes_per_step(),
            optimizer.state_buffer_count(),
        )
    };
    let roofline = {
        let floor = Roofline::new(gpu, len, states)?;
        floor.run(gpu, warmup)?;
        floor.run(gpu, steps)?
    };
    let cpu = {
        let mut twin = CpuOptimizer::new(rule, len)?;
        let (mut params, grads) = (pattern(len), pattern(len));
        let start = Instant::now();
        for _ in 0..cpu_steps {
            twin.step(&mut params, &grads)?;
        }
        start.elapsed() / cpu_steps.max(1)
    };
    Ok(Measurement {
        rule: name,
        len,
        bytes_per_step,
        fused,
        roofline,
        cpu,
    })
}
