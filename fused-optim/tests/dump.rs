//! `FUSED_OPTIM_DUMP_KERNELS`: every kernel the library compiles is written out as assembled,
//! and each file is WGSL that naga parses and validates. A binary of its own, since the
//! variable is process-wide.

use fused_optim::tooling::DUMP_KERNELS;
use fused_optim::{Adam, Dtype, GpuContext, GradGuard, Optimizer, Precision};

#[test]
fn every_compiled_kernel_is_written_out_for_reading() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var(DUMP_KERNELS, dir.path());
    let gpu = GpuContext::new().expect("a GPU adapter (lavapipe in CI)");
    let len = 1029; // a vector body and a scalar tail
    let params = gpu
        .upload_bytes("params", &Dtype::Bf16.encode(&vec![0.5; len]))
        .unwrap();
    let grads = gpu
        .upload_bytes("grads", &Dtype::Bf16.encode(&vec![0.1; len]))
        .unwrap();
    let mut adam = Optimizer::with_precision(&gpu, Adam::default(), Precision::lean(), len)
        .unwrap()
        .with_grad_guard(GradGuard::default())
        .unwrap();
    adam.step(&params, &grads).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The update's vector and scalar kernels and the guard's reduction and combine.
    assert!(
        names.iter().filter(|n| n.starts_with("adam-")).count() >= 2,
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("grad-guard-")),
        "{names:?}"
    );
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        assert!(
            source.contains("fn main") || source.contains("@compute"),
            "{file:?}"
        );
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{file:?}: {}", e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file:?}: {e:?}"));
    }
}
