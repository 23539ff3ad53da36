//! What the GPU tests share with the browser tests (browser-tests/ includes this file): their
//! random data, bounds and comparisons. No GPU, no files.

use fused_optim::{DispatchLimits, GradStatus};
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
