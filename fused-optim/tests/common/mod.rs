//! Shared by the GPU test binaries: one context per binary, random data, error measurement.
#![allow(dead_code)] // each test binary uses its own subset

mod measure;
pub use measure::*;

use std::sync::OnceLock;

use fused_optim::{GpuContext, StepValues};
use rand::{Rng, SeedableRng};

/// One device per test binary; error scopes are per thread, so tests may share it.
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| GpuContext::new().expect("a GPU adapter (lavapipe in CI)"))
}

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

/// A JSON array of numbers as f32 (the golden files' values).
pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// f32 params (seed 1) and grads (seed 2) of `len` random non-zero values on `gpu`.
pub fn params_and_grads(gpu: &GpuContext, len: usize) -> (wgpu::Buffer, wgpu::Buffer) {
    (
        gpu.upload("params", &random_nonzero(len, 1)).unwrap(),
        gpu.upload("grads", &random_nonzero(len, 2)).unwrap(),
    )
}

/// The shared device with `FORCED_LIMITS`, so window edges are crossed on any adapter.
pub fn forced_windows() -> GpuContext {
    gpu().with_dispatch_limits(FORCED_LIMITS).unwrap()
}

/// The shared device with forced windows, once per way of passing the per-dispatch values
/// this adapter supports: immediates where it has them, and the uniform copied in by each step
/// everywhere.
pub fn step_value_contexts() -> Vec<(StepValues, GpuContext)> {
    let forced = forced_windows();
    let mut contexts = Vec::new();
    for values in [StepValues::Immediates, StepValues::UniformCopy] {
        match forced.with_step_values(values) {
            Ok(context) => contexts.push((values, context)),
            Err(error) => println!("{values:?} not tested on this adapter: {error}"),
        }
    }
    contexts
}

/// Asserts `got` is within `TWIN_TOLERANCE` of `want`, naming `what` otherwise.
pub fn assert_twin_close(what: &str, got: &[f32], want: &[f32]) {
    let error = worst_relative_error(got, want);
    assert!(
        error <= TWIN_TOLERANCE,
        "{what} off by {error:e} (bound {TWIN_TOLERANCE:e})"
    );
}

/// Errors inside a pass surface only when the caller's encoder finishes, outside our scopes;
/// a failed `record_step` must leave that encoder clean.
pub fn assert_encoder_still_clean(gpu: &GpuContext, encoder: wgpu::CommandEncoder) {
    let submitted = gpu.scoped("submitting the caller's encoder", || {
        gpu.queue().submit([encoder.finish()]);
    });
    assert!(
        submitted.is_ok(),
        "the failed step left work in the encoder: {submitted:?}"
    );
}

/// The status with f32 fields as bits, so NaN norms compare.
pub fn status_bits(status: &fused_optim::GradStatus) -> Vec<u32> {
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
