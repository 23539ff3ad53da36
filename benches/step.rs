//! `cargo bench`: one fused step of each rule at 1M parameters on the default adapter, so
//! regressions in the kernels or the host layer show up. `fused-optim bench` is the full report.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fused_optim::bench::Workload;
use fused_optim::{Adagrad, Adam, GpuContext, RmsProp, Sgd, UpdateRule};

const LEN: usize = 1 << 20;

fn bench_rule<R: UpdateRule>(c: &mut Criterion, gpu: &GpuContext, rule: R) {
    let name = rule.name();
    let mut workload = Workload::new(gpu, rule, LEN).expect("bench workload");
    let mut group = c.benchmark_group("fused_step_1M");
    group.throughput(Throughput::Bytes(workload.optimizer.bytes_per_step()));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| workload.run(gpu, iters as u32).expect("bench step") * iters as u32)
    });
    group.finish();
}

fn steps(c: &mut Criterion) {
    let gpu = GpuContext::new().expect("a GPU adapter");
    bench_rule(
        c,
        &gpu,
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        },
    );
    bench_rule(c, &gpu, Adam::default());
    bench_rule(c, &gpu, Adam::adamw());
    bench_rule(c, &gpu, RmsProp::default());
    bench_rule(c, &gpu, Adagrad::default());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = steps
}
criterion_main!(benches);
