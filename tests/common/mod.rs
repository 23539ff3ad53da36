//! Shared by the GPU test binaries: one context per binary, random data, error measurement.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::OnceLock;

use fused_optim::GpuContext;
use rand::{Rng, SeedableRng};

/// One device per test binary; error scopes are per thread, so tests may share it.
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| GpuContext::new().expect("a GPU adapter (lavapipe in CI)"))
}

/// Values in ±[0.05, 1): random sign and magnitude, never zero, so every term of every rule
/// contributes.
pub fn random_nonzero(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let magnitude: f32 = rng.random_range(0.05..1.0);
            if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            }
        })
        .collect()
}

/// Worst relative error of `got` against `want`, relative to max(|want|, 1e-3) so that values
/// near zero after cancellation are judged by their absolute error at the scale of the inputs.
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
                (g as f64 - w as f64).abs() / (w.abs() as f64).max(1e-3)
            }
        })
        .fold(0.0, f64::max)
}
