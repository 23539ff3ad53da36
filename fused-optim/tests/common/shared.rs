//! What the GPU tests share with the browser tests (browser-tests/ includes this file): their
//! random data, bounds and comparisons, and a GPU optimizer set up and stepped beside its twin.
//! Nothing here waits for the GPU (a browser cannot block) and nothing touches files.

use fused_optim::wgpu;
use fused_optim::{
    CpuOptimizer, DispatchLimits, GpuContext, GradGuard, GradStatus, Optimizer, Precision,
    UpdateRule,
};
use rand::{Rng, SeedableRng};

/// The smallest magnitude `random_nonzero` produces.
pub const INPUT_SCALE: f64 = 0.05;

/// Worst relative error of `got` against `want`, relative to max(|want|, INPUT_SCALE): a value
/// that cancelled to near zero (p - lr * u with both terms around 0.2, say) is judged at the
/// scale of the inputs that produced it, where one rounding of those inputs is what it can
/// carry. NaN against a number is an infinite error.
pub fn worst_relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.to_bits() == w.to_bits() {
                0.0
            } else if g.is_nan() || w.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w as f64).abs() / (w.abs() as f64).max(INPUT_SCALE)
            }
        })
        .fold(0.0, f64::max)
}

/// Forced windows of 1004 elements: a multiple of 4 but not of any storage offset alignment
/// (8 to 64 elements), so windows after the first start inside an aligned block and reach
/// their first element through the header's `begin`. Three workgroups per dimension fold each
/// window's four workgroups into a 2x2 grid.
pub const FORCED_LIMITS: DispatchLimits = DispatchLimits {
    window_elements: 1004,
    workgroups_per_dimension: 3,
};

/// Bound on the worst relative error (see `worst_relative_error`) of a GPU step against its
/// CPU twin after a few steps. Each step is a handful of f32 operations; Vulkan allows sqrt
/// and division 2.5 ulp (about 3e-7 relative) and a driver may contract a * b + c into one
/// fma. Centered RMSprop subtracts grad_avg² from square_avg, which cancels about
/// log2(1 / (1 - alpha)) bits and magnifies those differences up to 10 times at the
/// alpha = 0.9 the tests use. Five compounding steps of that stay well under 1e-4.
pub const TWIN_TOLERANCE: f64 = 1e-4;

/// Values in ±[INPUT_SCALE, 1): random sign and magnitude, never zero, so every term of every rule
/// contributes.
pub fn random_nonzero(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let magnitude: f32 = rng.random_range(INPUT_SCALE as f32..1.0);
            if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            }
        })
        .collect()
}

/// Each value's bit pattern, so that NaNs compare and signed zeros differ.
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Where two equally long sequences first differ, and how many elements differ.
pub fn differences<T: PartialEq>(got: &[T], want: &[T]) -> Option<(usize, usize)> {
    assert_eq!(got.len(), want.len());
    let mut differ = (0..got.len()).filter(|&i| got[i] != want[i]);
    let first = differ.next()?;
    Some((first, 1 + differ.count()))
}

/// The status with f32 fields as bits, so NaN norms compare.
pub fn status_bits(status: &GradStatus) -> Vec<u32> {
    let floats = [
        status.scale,
        status.total_norm,
        status.inv_scale,
        status.clip_coef,
    ];
    let words = [
        status.growth_tracker,
        status.applied,
        status.skipped,
        status.t,
    ];
    let flags = [status.found_inf as u32, status.skip as u32];
    floats
        .iter()
        .map(|f| f.to_bits())
        .chain(words)
        .chain(flags)
        .collect()
}

/// A GPU optimizer and its CPU twin over the same params, `random_nonzero(len, seed)` in the
/// precision's param format, with a grads buffer for each step to fill.
pub struct SideBySide<R: UpdateRule> {
    /// The context both buffers and the optimizer live on.
    pub gpu: GpuContext,
    /// The params' and grads' formats, and the state's.
    pub precision: Precision,
    /// Elements.
    pub len: usize,
    /// The twin's params, in the precision's param format.
    pub params_cpu: Vec<u8>,
    /// The GPU's params.
    pub params: wgpu::Buffer,
    /// The GPU's grads, written before each step.
    pub grads: wgpu::Buffer,
    /// The twin.
    pub cpu: CpuOptimizer<R>,
    /// The optimizer under test.
    pub optimizer: Optimizer<R>,
}

impl<R: UpdateRule> SideBySide<R> {
    /// Both sides of `rule` in `precision` over `len` params seeded with `seed`.
    pub fn new(gpu: &GpuContext, rule: &R, precision: &Precision, len: usize, seed: u64) -> Self {
        let what = format!("{} [{precision}] len {len}", rule.name());
        let params_cpu = precision.params.encode(&random_nonzero(len, seed));
        let grads = precision.grads.encode(&vec![0.0; len]);
        Self {
            gpu: gpu.clone(),
            precision: precision.clone(),
            len,
            params: gpu.upload_bytes("params", &params_cpu).unwrap(),
            grads: gpu.upload_bytes("grads", &grads).unwrap(),
            params_cpu,
            cpu: CpuOptimizer::with_precision(rule.clone(), precision.clone(), len)
                .unwrap_or_else(|e| panic!("{what}: the twin: {e}")),
            optimizer: Optimizer::with_precision(gpu, rule.clone(), precision.clone(), len)
                .unwrap_or_else(|e| panic!("{what}: the optimizer: {e}")),
        }
    }

    /// One unguarded step of both at `lr`, on grads `random_nonzero(len, grad_seed)` in the
    /// precision's grad format.
    pub fn step(&mut self, lr: f64, grad_seed: u64) {
        let grads = self
            .precision
            .grads
            .encode(&random_nonzero(self.len, grad_seed));
        self.gpu.queue().write_buffer(&self.grads, 0, &grads);
        self.cpu.set_lr(lr).unwrap();
        self.optimizer.set_lr(lr).unwrap();
        self.cpu.step_bytes(&mut self.params_cpu, &grads).unwrap();
        self.optimizer.step(&self.params, &self.grads).unwrap();
    }
}

/// Step `step`'s grads (from 1) for a guarded run: `random_nonzero(len, seed + step)` times the
/// loss scale, with an inf at step 3 and a NaN at step 5 in the last element where `guard`
/// skips such steps, and where it only clips (a NaN would reach the params) a large 1e30 at
/// step 3 instead.
pub fn guarded_grads(guard: &GradGuard, len: usize, seed: u64, step: u64, scale: f32) -> Vec<f32> {
    let mut values: Vec<f32> = random_nonzero(len, seed + step)
        .into_iter()
        .map(|g| g * scale)
        .collect();
    match (step, guard.skips()) {
        (3, true) => values[len - 1] = f32::INFINITY,
        (5, true) => values[len - 1] = f32::NAN,
        (3, false) => values[len - 1] = 1e30,
        _ => {}
    }
    values
}
