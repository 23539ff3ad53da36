//! `cargo bench`: one fused step of each rule, and the roofline kernel moving the same bytes,
//! at 1M and 16M parameters on the default adapter, so regressions in the kernels or the host
//! layer show up. `fused-optim bench` is the full report.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use fused_optim::bench::{Roofline, Workload};
use fused_optim::{Adagrad, Adam, GpuContext, RmsProp, Sgd, UpdateRule};

const SIZES: [(usize, &str); 2] = [(1 << 20, "1M"), (16 << 20, "16M")];

fn bench_rule<R: UpdateRule>(
    group: &mut BenchmarkGroup<WallTime>,
    gpu: &GpuContext,
    rule: R,
    len: usize,
) {
    let name = rule.name();
    let mut workload = Workload::new(gpu, rule, len).expect("bench workload");
    let optimizer = &workload.optimizer;
    let (bytes, states) = (optimizer.bytes_per_step(), optimizer.state_buffer_count());
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| workload.run(gpu, iters as u32).expect("bench step") * iters as u32)
    });
    let roofline = Roofline::new(gpu, len, states).expect("roofline");
    group.bench_function(format!("{name}-roofline"), |b| {
        b.iter_custom(|iters| {
            roofline.run(gpu, iters as u32).expect("roofline pass") * iters as u32
        })
    });
}

fn steps(c: &mut Criterion) {
    let gpu = GpuContext::new().expect("a GPU adapter");
    for (len, label) in SIZES {
        let mut group = c.benchmark_group(format!("fused_step_{label}"));
        group.sample_size(10);
        let momentum = Sgd {
            momentum: 0.9,
            ..Sgd::default()
        };
        bench_rule(&mut group, &gpu, momentum, len);
        bench_rule(&mut group, &gpu, Adam::default(), len);
        bench_rule(&mut group, &gpu, Adam::adamw(), len);
        bench_rule(&mut group, &gpu, RmsProp::default(), len);
        bench_rule(&mut group, &gpu, Adagrad::default(), len);
        group.finish();
    }
}

criterion_group!(benches, steps);
criterion_main!(benches);
