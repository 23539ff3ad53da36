//! Timing of fused steps, shared by the CLI's `bench` and the criterion benches.

use std::time::{Duration, Instant};

use crate::context::GpuContext;
use crate::error::Result;
use crate::kernel::UpdateRule;
use crate::optimizer::Optimizer;

/// One rule timed on one adapter.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub rule: &'static str,
    pub len: usize,
    pub bytes_per_step: u64,
    pub per_step: Duration,
}

impl Measurement {
    /// Bytes the rule must move per step over the time it took, in GB/s (10^9 bytes).
    pub fn gigabytes_per_second(&self) -> f64 {
        self.bytes_per_step as f64 / self.per_step.as_secs_f64() / 1e9
    }
}

/// Buffers and an optimizer ready to step: params and grads filled with small non-zero values.
pub struct Workload<R: UpdateRule> {
    pub optimizer: Optimizer<R>,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
}

impl<R: UpdateRule> Workload<R> {
    pub fn new(gpu: &GpuContext, rule: R, len: usize) -> Result<Self> {
        let values: Vec<f32> = (0..len).map(|i| 1e-3 * ((i % 997) as f32 + 1.0)).collect();
        Ok(Self {
            optimizer: Optimizer::new(gpu, rule, len)?,
            params: gpu.upload("bench params", &values)?,
            grads: gpu.upload("bench grads", &values)?,
        })
    }

    /// Submits `steps` steps back to back and waits for the last: wall-clock time per step.
    pub fn run(&mut self, gpu: &GpuContext, steps: u32) -> Result<Duration> {
        gpu.wait()?;
        let start = Instant::now();
        for _ in 0..steps {
            self.optimizer.step(&self.params, &self.grads)?;
        }
        gpu.wait()?;
        Ok(start.elapsed() / steps.max(1))
    }
}

/// Times `rule` over `len` parameters: `warmup` untimed steps, then `steps` timed ones.
pub fn measure<R: UpdateRule>(
    gpu: &GpuContext,
    rule: R,
    len: usize,
    warmup: u32,
    steps: u32,
) -> Result<Measurement> {
    let name = rule.name();
    let mut workload = Workload::new(gpu, rule, len)?;
    workload.run(gpu, warmup)?;
    let per_step = workload.run(gpu, steps)?;
    Ok(Measurement {
        rule: name,
        len,
        bytes_per_step: workload.optimizer.bytes_per_step(),
        per_step,
    })
}
