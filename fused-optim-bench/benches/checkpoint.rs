//! `cargo bench -p fused-optim-bench --bench checkpoint`: what a checkpoint of Adam over 16M
//! parameters costs the training loop, in f32 and in the leanest formats: a step alone, a
//! step with the checkpoint's copies recorded into its encoder (what the loop waits for with
//! `record_checkpoint`), the host side of a recorded checkpoint (mapping and cutting out the
//! tensors), and a blocking `save` (copies, readback, serialization, file write and sync).

use criterion::{criterion_group, criterion_main, Criterion};
use fused_optim::{Adam, GpuContext, Optimizer, Precision};
use fused_optim_bench::measure::{pattern, time_steps};

const LEN: usize = 16 << 20;

fn checkpoints(c: &mut Criterion) {
    let gpu = GpuContext::new().expect("a GPU adapter");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("checkpoint.safetensors");
    for name in ["f32", "bf16,master=remainder,state=8bit"] {
        let precision: Precision = name.parse().expect("a preset");
        let values = pattern(LEN);
        let params = gpu
            .upload_bytes("params", &precision.params.encode(&values))
            .expect("params");
        let grads = gpu
            .upload_bytes("grads", &precision.grads.encode(&values))
            .expect("grads");
        let mut adam =
            Optimizer::with_precision(&gpu, Adam::default(), precision, LEN).expect("optimizer");
        let mut group = c.benchmark_group(format!("checkpoint-adam-16M-{name}"));
        group.sample_size(10);
        group.bench_function("step", |b| {
            b.iter_custom(|iters| {
                let per_step = time_steps(&gpu, iters as u32, || adam.step(&params, &grads));
                per_step.expect("step") * iters as u32
            })
        });
        // Each checkpoint read back (untimed, as a saving thread would) before the next, so
        // that its copies are reused as in a training loop.
        group.bench_function("step+recorded-copies", |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let start = std::time::Instant::now();
                    let mut encoder = gpu.device().create_command_encoder(&Default::default());
                    adam.record_step(&mut encoder, &params, &grads)
                        .expect("step");
                    let recorded = adam.record_checkpoint(&mut encoder).expect("recorded");
                    gpu.queue().submit([encoder.finish()]);
                    gpu.wait().expect("step and copies");
                    total += start.elapsed();
                    recorded.wait().expect("mapped");
                }
                total
            })
        });
        group.bench_function("recorded-wait", |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let mut encoder = gpu.device().create_command_encoder(&Default::default());
                    let recorded = adam.record_checkpoint(&mut encoder).expect("recorded");
                    gpu.queue().submit([encoder.finish()]);
                    gpu.wait().expect("copies");
                    let start = std::time::Instant::now();
                    recorded.wait().expect("mapped");
                    total += start.elapsed();
                }
                total
            })
        });
        group.bench_function("blocking-save", |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    adam.save(&path).expect("saved");
                }
                start.elapsed()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, checkpoints);
criterion_main!(benches);
