//! Every kernel form the host builds for a browser, compiled by Chromium's Tint: every
//! registered rule's WGSL for vector and scalar lanes, in every precision preset, unguarded
//! and guarded, with the per-step values in the uniform (WebGPU has no immediates). naga
//! validates the same sources natively (fused-optim's tests/shaders.rs); the two compilers
//! read WGSL apart where the specification is strict (a NaN constant expression, say).
#![cfg(target_arch = "wasm32")]

use browser_tests::gpu;
use fused_optim::tooling::shader_sources;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn every_kernel_form_compiles_in_tint() {
    let gpu = gpu().await;
    let forms: Vec<_> = shader_sources()
        .into_iter()
        .filter(|(name, _)| name.contains("UniformCopy"))
        .collect();
    assert!(forms.len() > 100, "only {} forms", forms.len());
    let mut refused = Vec::new();
    for (name, source) in &forms {
        let compiled = gpu.scoped("compiling a kernel", || {
            gpu.device()
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
        });
        let settled = gpu.settle().await;
        if let Err(error) = compiled.and(settled) {
            refused.push(format!("{name}: {error}"));
        }
    }
    assert!(
        refused.is_empty(),
        "Tint refused {} of {} forms:\n{}",
        refused.len(),
        forms.len(),
        refused.join("\n")
    );
}
