//! What the browser tests share: the page's WebGPU context, and the native tests' data, bounds
//! and comparisons. Natively empty: the tests run in headless Chromium (`cargo test -p
//! browser-tests --target wasm32-unknown-unknown`, see README).
#![cfg(target_arch = "wasm32")]

use fused_optim::GpuContext;

/// The page's WebGPU adapter. The browser exposes one; each test opens its own device.
pub async fn gpu() -> GpuContext {
    GpuContext::new_async()
        .await
        .expect("a WebGPU adapter: Chromium needs --enable-unsafe-webgpu and ANGLE on Vulkan")
}

// The native tests' data, bounds and comparisons, the same file: a browser is held to what
// lavapipe is, on the same data.
#[path = "../../fused-optim/tests/common/shared.rs"]
mod shared;
pub use shared::*;
