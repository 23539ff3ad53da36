//! `cargo bench -p fused-optim-bench`: one fused step of every registered rule's variants, the
//! roofline kernel moving the same bytes and the rule's unfused chain, at 1M and 16M parameters on the default adapter, so regressions in the kernels or the host
//! layer show up, and a many-tensor parameter set beside one tensor of the same length.
//! `fused-optim bench` is the full report.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use fused_optim::baseline::{Roofline, UnfusedChain};
use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor, Unfused};
use fused_optim::{Adam, DispatchLimits, GpuContext, Optimizer, ParamSet, UpdateRule};
use fused_optim_bench::measure::{gpt2_groups, gpt2_tensors, pattern, time_steps};

const SIZES: [(usize, &str); 2] = [(1 << 20, "1M"), (16 << 20, "16M")];

/// Criterion timing of `rule`'s fused step, submit to completion, on fixed buffers.
fn bench_optimizer<R: UpdateRule>(
    group: &mut BenchmarkGroup<WallTime>,
    gpu: &GpuContext,
    name: &str,
    rule: R,
    len: usize,
) -> usize {
    let mut optimizer = Optimizer::new(gpu, rule, len).expect("optimizer");
    let values = pattern(len);
    let params = gpu.upload("params", &values).expect("params");
    let grads = gpu.upload("grads", &values).expect("grads");
    group.throughput(Throughput::Bytes(optimizer.bytes_per_step()));
    let states = optimizer
        .state_names()
        .iter()
        .filter(|n| **n != "step")
        .count();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let per_step = time_steps(gpu, iters as u32, || optimizer.step(&params, &grads));
            per_step.expect("step") * iters as u32
        })
    });
    states
}

/// `rule` beside the roofline moving the same bytes and its unfused chain.
fn bench_rule<R: Unfused>(
    group: &mut BenchmarkGroup<WallTime>,
    gpu: &GpuContext,
    rule: R,
    len: usize,
) {
    let name = rule.name();
    let states = bench_optimizer(group, gpu, name, rule.clone(), len);
    let roofline = Roofline { states };
    bench_optimizer(group, gpu, &format!("{name}-roofline"), roofline, len);
    let mut chain = UnfusedChain::new(gpu, rule, len).expect("unfused chain");
    let values = pattern(len);
    let params = gpu.upload("params", &values).expect("params");
    let grads = gpu.upload("grads", &values).expect("grads");
    group.bench_function(format!("{name}-unfused"), |b| {
        b.iter_custom(|iters| {
            let per_step = time_steps(gpu, iters as u32, || chain.step(&params, &grads));
            per_step.expect("unfused step") * iters as u32
        })
    });
}

/// Every registered rule's variants at one size.
struct EveryVariant<'a, 'c> {
    group: &'a mut BenchmarkGroup<'c, WallTime>,
    gpu: &'a GpuContext,
    len: usize,
}

impl RuleVisitor for EveryVariant<'_, '_> {
    fn visit<R: RegisteredRule>(&mut self) {
        for rule in R::variants() {
            bench_rule(self.group, self.gpu, rule, self.len);
        }
    }
}

fn steps(c: &mut Criterion) {
    let gpu = GpuContext::new().expect("a GPU adapter");
    for (len, label) in SIZES {
        let mut group = c.benchmark_group(format!("fused_step_{label}"));
        group.sample_size(10);
        visit_rules(&mut EveryVariant {
            group: &mut group,
            gpu: &gpu,
            len,
        });
        group.finish();
    }
}

/// What many tensors, groups and windows cost: AdamW over a 148-tensor GPT-2-shaped set of
/// about 15M parameters in two groups (decay / no decay), beside one tensor of the same
/// packed length, and beside that tensor cut into 1M-element windows.
fn many_tensors(c: &mut Criterion) {
    let gpu = GpuContext::new().expect("a GPU adapter");
    let tensors = gpt2_tensors(192);
    let rule = Adam {
        weight_decay: 0.1,
        ..Adam::adamw()
    };
    let no_decay = Adam {
        weight_decay: 0.0,
        ..rule.clone()
    };
    let groups = gpt2_groups(&tensors, rule.clone(), no_decay);
    let mut set = ParamSet::new(&gpu, &tensors, groups).expect("parameter set");
    let len = set.layout().len() as usize;
    let values = pattern(len);
    let params = gpu.upload("params", &values).expect("params");
    let grads = gpu.upload("grads", &values).expect("grads");
    let mut group = c.benchmark_group("many_tensors_15M");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(set.bytes_per_step()));
    group.bench_function("gpt2-148-tensors-2-groups", |b| {
        b.iter_custom(|iters| {
            let per_step = time_steps(&gpu, iters as u32, || set.step(&params, &grads));
            per_step.expect("set step") * iters as u32
        })
    });
    let windowed = gpu
        .with_dispatch_limits(DispatchLimits {
            window_elements: 1 << 20,
            ..gpu.dispatch_limits()
        })
        .expect("1M windows");
    for (name, context) in [("one-tensor", &gpu), ("one-tensor-1M-windows", &windowed)] {
        let mut optimizer = Optimizer::new(context, rule.clone(), len).expect("optimizer");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per_step = time_steps(&gpu, iters as u32, || optimizer.step(&params, &grads));
                per_step.expect("step") * iters as u32
            })
        });
    }
    group.finish();
}

criterion_group!(benches, steps, many_tensors);
criterion_main!(benches);
