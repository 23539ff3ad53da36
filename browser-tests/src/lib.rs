//! What the browser tests share: the page's WebGPU context, data and error measures. Natively
//! empty: the tests run in headless Chromium (`cargo test -p browser-tests --target
//! wasm32-unknown-unknown`, see README).
#![cfg(target_arch = "wasm32")]

use fused_optim::GpuContext;

/// The page's WebGPU adapter. The browser exposes one; each test opens its own device.
pub async fn gpu() -> GpuContext {
    GpuContext::new_async()
        .await
        .expect("a WebGPU adapter: Chromium needs --enable-unsafe-webgpu and ANGLE on Vulkan")
}

// The native tests' bounds and measures, the same file: a browser is held to what lavapipe is.
#[path = "../../fused-optim/tests/common/measure.rs"]
mod measure;
pub use measure::{worst_relative_error, FORCED_LIMITS, INPUT_SCALE, TWIN_TOLERANCE};

/// Values in ±[INPUT_SCALE, 1), never zero, so every term of every rule contributes; a
/// SplitMix64 stream of `seed` (no OS randomness in a browser test).
pub fn random_nonzero(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..len)
        .map(|_| {
            let bits = next();
            let unit = (bits >> 40) as f32 / (1u64 << 24) as f32;
            let magnitude = INPUT_SCALE as f32 + (1.0 - INPUT_SCALE as f32) * unit;
            if bits & 1 == 0 {
                magnitude
            } else {
                -magnitude
            }
        })
        .collect()
}

/// Elements whose bits differ, and the first of them.
pub fn differences(got: &[f32], want: &[f32]) -> Option<(usize, usize)> {
    assert_eq!(got.len(), want.len());
    let mut differ = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits());
    let first = differ.next()?;
    Some((first, 1 + differ.count()))
}
