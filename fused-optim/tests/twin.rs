//! Every registered rule and every flag combination on the GPU against its CPU twin, on random non-zero
//! data, at sizes that are not multiples of the workgroup (256) or of the vector width (4), so
//! both the vec4 body and the scalar tail run, over seven steps with the learning rate changed
//! before each one. Params and every state buffer are compared. Each configuration runs with
//! the adapter's dispatch limits, with windows forced down to a few hundred elements so every
//! window edge is crossed on any adapter, and with the per-step values in a uniform instead of
//! immediates.

mod common;

use fused_optim::baseline::UnfusedChain;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor, Unfused};
use fused_optim::{Adam, CpuOptimizer, GpuContext, Optimizer, StepValues};

const SIZES: [usize; 9] = [1, 3, 4, 5, 255, 257, 1025, 100_003, 4_194_307];

/// Sizes that leave short last windows under `common::FORCED_LIMITS`.
const FORCED_SIZES: [usize; 6] = [3, 1004, 1005, 2011, 3012, 100_003];

/// Sizes for the context whose values come through the uniform copy: a scalar-only tensor,
/// vectors with a tail, and several forced windows.
const UNIFORM_SIZES: [usize; 3] = [3, 1025, 3013];

/// The shared context with its own limits (immediates where the adapter has them), with
/// forced small windows, and with forced windows and the values in a uniform.
fn contexts() -> [(GpuContext, &'static [usize]); 3] {
    let gpu = common::gpu();
    let uniform = common::forced_windows()
        .with_step_values(StepValues::UniformCopy)
        .unwrap();
    [
        (gpu.clone(), &SIZES),
        (common::forced_windows(), &FORCED_SIZES),
        (uniform, &UNIFORM_SIZES),
    ]
}

/// Seven steps: RAdam rectifies from its sixth (rho_t > 5), so both of its branches run.
const STEPS: usize = 7;
const LEARNING_RATES: [f64; STEPS] = [0.1, 0.03, 0.2, 0.05, 0.12, 0.08, 0.15];

/// The bound is `common::TWIN_TOLERANCE`, justified there. The rules' `every_flag`
/// hyperparameters are bolder than PyTorch's defaults (lr up to 0.2, weight decay 0.3, eps
/// 1e-2) so that every term moves the result by far more than the bound: a wrong term, order,
/// flag or epsilon placement shows up at 1e-3 or more.
const TOLERANCE: f64 = common::TWIN_TOLERANCE;

fn check_rule<R: Unfused>(rule: R) {
    let mut worst = (0.0, "params", SIZES[0]);
    for (gpu, sizes) in contexts() {
        for (index, &len) in sizes.iter().enumerate() {
            let seed = 1000 * index as u64;
            let mut params_cpu = common::random_nonzero(len, seed);
            let params = gpu.upload("params", &params_cpu).unwrap();
            let grads = gpu.upload("grads", &params_cpu).unwrap();
            let mut cpu = CpuOptimizer::new(rule.clone(), len).unwrap();
            let mut optimizer = Optimizer::new(&gpu, rule.clone(), len).unwrap();
            // The benchmark's unfused baseline must compute the same step (different rounding
            // order, same bound); it runs below the largest size, where it would dominate.
            let unfused_params = gpu.upload("params", &params_cpu).unwrap();
            let mut unfused =
                (len < 1 << 20).then(|| UnfusedChain::new(&gpu, rule.clone(), len).unwrap());
            for (step, lr) in LEARNING_RATES.into_iter().enumerate() {
                let grads_cpu = common::random_nonzero(len, seed + 1 + step as u64);
                gpu.write(&grads, &grads_cpu).unwrap();
                cpu.set_lr(lr).unwrap();
                optimizer.set_lr(lr).unwrap();
                cpu.step(&mut params_cpu, &grads_cpu).unwrap();
                optimizer.step(&params, &grads).unwrap();
                if let Some(chain) = &mut unfused {
                    chain.set_lr(lr).unwrap();
                    chain.step(&unfused_params, &grads).unwrap();
                }
            }
            let mut compared = vec![("params", gpu.download(&params).unwrap(), params_cpu.clone())];
            for name in optimizer.state_names() {
                compared.push((
                    name,
                    optimizer.read_state(name, 0).unwrap(),
                    cpu.read_state(name, 0).unwrap(),
                ));
            }
            if let Some(chain) = &unfused {
                compared.push((
                    "unfused params",
                    gpu.download(&unfused_params).unwrap(),
                    params_cpu,
                ));
                for name in optimizer.state_names() {
                    compared.push((
                        name,
                        chain.read_state(name).unwrap(),
                        cpu.read_state(name, 0).unwrap(),
                    ));
                }
            }
            let windows = optimizer.dispatches_per_step();
            for (name, got, want) in compared {
                let error = common::worst_relative_error(&got, &want);
                assert!(
                    error <= TOLERANCE,
                    "{} {:?}, len {len} in {windows} windows: {name} off by {error:e} \
                     (bound {TOLERANCE:e})",
                    rule.name(),
                    rule
                );
                if error > worst.0 {
                    worst = (error, name, len);
                }
            }
        }
    }
    println!(
        "{:<28} worst relative error {:.2e} ({} at len {})  {:?}",
        rule.name(),
        worst.0,
        worst.1,
        worst.2,
        rule
    );
}

/// Every registered rule in every flag combination ([`RegisteredRule::every_flag`]), one
/// thread per rule.
#[test]
fn every_rule_matches_its_twin() {
    struct Twins<'scope, 'env> {
        scope: &'scope std::thread::Scope<'scope, 'env>,
    }
    impl RuleVisitor for Twins<'_, '_> {
        fn visit<R: RegisteredRule>(&mut self) {
            self.scope
                .spawn(|| R::every_flag().into_iter().for_each(check_rule));
        }
    }
    std::thread::scope(|scope| visit_rules(&mut Twins { scope }));
}

/// Past 65535 * 256 elements the dispatch needs more than 65535 workgroups in x and is folded
/// into a 2D grid; every element must still be updated exactly once.
#[test]
fn folded_grid_updates_every_element() {
    let gpu = common::gpu();
    let len = 65_535 * fused_optim::tooling::WORKGROUP_SIZE as usize + 3;
    let max_per_dim = gpu.limits().max_compute_workgroups_per_dimension;
    let (_, rows) = fused_optim::tooling::dispatch_grid(len as u64, max_per_dim);
    assert!(rows > 1 || max_per_dim > 65_535, "expected a folded grid");
    let rule = Adam::adamw();
    let mut params_cpu = common::random_nonzero(len, 7);
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads_cpu = common::random_nonzero(len, 8);
    let grads = gpu.upload("grads", &grads_cpu).unwrap();
    let mut cpu = CpuOptimizer::new(rule.clone(), len).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule, len).unwrap();
    for _ in 0..2 {
        cpu.step(&mut params_cpu, &grads_cpu).unwrap();
        optimizer.step(&params, &grads).unwrap();
    }
    let error = common::worst_relative_error(&gpu.download(&params).unwrap(), &params_cpu);
    assert!(error <= TOLERANCE, "folded grid: params off by {error:e}");
    let error = common::worst_relative_error(
        &optimizer.read_state("exp_avg_sq", 0).unwrap(),
        &cpu.read_state("exp_avg_sq", 0).unwrap(),
    );
    assert!(
        error <= TOLERANCE,
        "folded grid: exp_avg_sq off by {error:e}"
    );
}
