//! Shared by the GPU test binaries: one context per binary, random data, error measurement.
#![allow(dead_code)] // each test binary uses its own subset

mod shared;
pub use shared::*;

use std::sync::OnceLock;

use fused_optim::{GpuContext, StepValues};

/// One device per test binary; error scopes are per thread, so tests may share it.
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| GpuContext::new().expect("a GPU adapter (lavapipe in CI)"))
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
