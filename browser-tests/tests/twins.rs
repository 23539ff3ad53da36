//! Every registered rule in every storage format, and under the grad guard, on the browser's
//! WebGPU adapter against its CPU twin: the kernels compiled by Chromium's Tint rather than
//! naga, run by Dawn. The cases are those of fused-optim's native tests (tests/twin.rs,
//! tests/formats.rs, tests/guard.rs) at fewer sizes, with the same bounds: f32 within the
//! twin tolerance, every compact format and every guarded step bit for bit. Sizes end
//! mid-vec4, mid-pair and mid-block; forced windows cut pairs and blocks and fold grids. The
//! browser's adapter has no immediates, so every kernel takes the per-step values from the
//! uniform.
#![cfg(target_arch = "wasm32")]

use std::future::Future;
use std::pin::Pin;

use browser_tests::{
    bits, differences, gpu, guarded_grads, status_bits, worst_relative_error, SideBySide,
    FORCED_LIMITS, TWIN_TOLERANCE,
};
use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    ClipGradNorm, CpuGuard, GpuContext, GradGuard, GradScaler, NormType, Precision, UpdateRule,
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const LEARNING_RATES: [f64; 7] = [0.1, 0.03, 0.2, 0.05, 0.12, 0.08, 0.15];

/// Sizes on the adapter's own limits, and under forced windows.
const SIZES: [usize; 3] = [1, 33, 1025];
const FORCED_SIZES: [usize; 1] = [2011];

/// One rule's runs: a future that names each run differing from its twin.
type RuleRuns = Pin<Box<dyn Future<Output = Vec<String>>>>;

/// Runs every rule's runs in turn and fails naming every run that differs.
async fn run_all(rules: Vec<RuleRuns>) {
    let count = rules.len();
    let mut failures = Vec::new();
    for runs in rules {
        failures.extend(runs.await);
    }
    assert!(
        failures.is_empty(),
        "{} runs of {count} rules differ from their twins:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The contexts a case runs on, each with its sizes.
async fn contexts() -> Vec<(GpuContext, &'static [usize])> {
    let gpu = gpu().await;
    let forced = gpu.with_dispatch_limits(FORCED_LIMITS).unwrap();
    vec![(gpu, &SIZES[..]), (forced, &FORCED_SIZES[..])]
}

/// Seven steps of `rule` in `precision` at `len` on the GPU and the twin, the learning rate
/// changed before each (RAdam rectifies from its sixth). `exact`: params (their bytes),
/// master and states bit for bit; otherwise the decoded f32 values within the twin tolerance.
async fn compare<R: UpdateRule>(
    gpu: &GpuContext,
    rule: &R,
    precision: &Precision,
    len: usize,
    exact: bool,
) -> Option<String> {
    let what = format!("{} [{precision}] len {len}", rule.name());
    let seed = len as u64;
    let mut pair = SideBySide::new(gpu, rule, precision, len, seed);
    for (step, lr) in LEARNING_RATES.into_iter().enumerate() {
        pair.step(lr, seed + 1 + step as u64);
    }
    let SideBySide {
        params_cpu,
        params,
        cpu,
        optimizer,
        ..
    } = pair;
    let got = gpu.download_bytes_async(&params).await.unwrap();
    let mut compared = vec![(
        "params".to_owned(),
        precision.params.decode(&got, len),
        precision.params.decode(&params_cpu, len),
    )];
    if let Some(master) = optimizer.read_master_async(&params).await.unwrap() {
        compared.push(("master".into(), master, cpu.master(&params_cpu).unwrap()));
    }
    for name in optimizer.state_names() {
        let got = optimizer.read_state_async(name, 0).await.unwrap();
        compared.push((name.into(), got, cpu.read_state(name, 0).unwrap()));
    }
    gpu.settle().await.unwrap();
    compared.into_iter().find_map(|(name, got, want)| {
        if exact {
            let (first, count) = differences(&bits(&got), &bits(&want))?;
            Some(format!(
                "{what}: {count} values of {name} differ, the first at {first}: {:e} against {:e}",
                got[first], want[first]
            ))
        } else {
            let error = worst_relative_error(&got, &want);
            (error > TWIN_TOLERANCE)
                .then(|| format!("{what}: {name} off by {error:e} (bound {TWIN_TOLERANCE:e})"))
        }
    })
}

/// Every rule in every flag combination in f32, within the twin tolerance.
#[wasm_bindgen_test]
async fn every_rule_and_flag_in_f32_matches_its_twin() {
    struct Rules(Vec<RuleRuns>);
    impl RuleVisitor for Rules {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.push(Box::pin(async {
                let mut failures = Vec::new();
                for (gpu, sizes) in contexts().await {
                    for rule in R::every_flag() {
                        for &len in sizes {
                            let precision = Precision::default();
                            failures.extend(compare(&gpu, &rule, &precision, len, false).await);
                        }
                    }
                }
                failures
            }));
        }
    }
    let mut rules = Rules(Vec::new());
    visit_rules(&mut rules);
    run_all(rules.0).await;
}

/// Every rule (its first flag combination) in every precision preset past f32, bit for bit:
/// the 16-bit codecs, the master correction and the block codes are integer arithmetic or
/// exactly rounded operations, on the GPU and in the twin alike.
#[wasm_bindgen_test]
async fn every_rule_in_every_format_matches_its_twin_bit_for_bit() {
    struct Formats(Vec<RuleRuns>);
    impl RuleVisitor for Formats {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.push(Box::pin(async {
                let mut failures = Vec::new();
                let rule = R::every_flag().swap_remove(0);
                for (gpu, sizes) in contexts().await {
                    for (_, precision) in Precision::presets().into_iter().skip(1) {
                        for &len in sizes {
                            failures.extend(compare(&gpu, &rule, &precision, len, true).await);
                        }
                    }
                }
                failures
            }));
        }
    }
    let mut formats = Formats(Vec::new());
    visit_rules(&mut formats);
    run_all(formats.0).await;
}

/// The guards of the native suite: a scaler that grows and backs off with both clippings,
/// and clipping by inf-norm alone.
fn guards() -> [GradGuard; 2] {
    let scaler = GradScaler::default()
        .with_init_scale(1024.0)
        .with_growth_interval(2);
    [
        GradGuard::new()
            .with_scaler(scaler)
            .with_clip_value(0.9)
            .with_clip_norm(ClipGradNorm::new(4.0)),
        GradGuard::new().with_clip_norm(ClipGradNorm::new(0.5).with_norm_type(NormType::Inf)),
    ]
}

/// Six guarded steps of `rule` in `precision` on the GPU and the twins: grads scaled by the
/// twin's scale, an inf at step 3 and a NaN at step 5 in the last element (a 1e30 grad for
/// the clipping where nothing skips). The status after every step, the params, the master
/// and every state bit for bit.
async fn compare_guarded<R: UpdateRule>(
    gpu: &GpuContext,
    rule: &R,
    precision: &Precision,
    guard: GradGuard,
    len: usize,
) -> Option<String> {
    let what = format!("{} [{precision}] {guard:?} len {len}", rule.name());
    let seed = len as u64 + 7;
    let SideBySide {
        mut params_cpu,
        params,
        grads,
        mut cpu,
        optimizer,
        ..
    } = SideBySide::new(gpu, rule, precision, len, seed);
    let mut twin = CpuGuard::new(guard).unwrap();
    let mut optimizer = optimizer.with_grad_guard(guard).unwrap();
    for step in 1..=6u64 {
        let values = guarded_grads(&guard, len, seed, step, twin.status().scale);
        let grads_cpu = precision.grads.encode(&values);
        gpu.queue().write_buffer(&grads, 0, &grads_cpu);
        let decoded = precision.grads.decode(&grads_cpu, len);
        let grad_step = twin.check(&[&decoded]);
        cpu.step_guarded(&mut params_cpu, &grads_cpu, &grad_step)
            .unwrap();
        optimizer.step(&params, &grads).unwrap();
        let status = optimizer.read_grad_status_async().await.unwrap().unwrap();
        let want = twin.status();
        if status_bits(&status) != status_bits(&want) {
            return Some(format!(
                "{what}: status after step {step}: {status:?} against {want:?}"
            ));
        }
    }
    let got = gpu.download_bytes_async(&params).await.unwrap();
    if got != params_cpu {
        return Some(format!("{what}: params differ"));
    }
    let master = optimizer.read_master_async(&params).await.unwrap();
    if master.as_deref().map(bits) != cpu.master(&params_cpu).as_deref().map(bits) {
        return Some(format!("{what}: master weights differ"));
    }
    for name in optimizer.state_names() {
        let got = optimizer.read_state_async(name, 0).await.unwrap();
        let want = cpu.read_state(name, 0).unwrap();
        if let Some((first, count)) = differences(&bits(&got), &bits(&want)) {
            return Some(format!(
                "{what}: {count} values of {name} differ, first at {first}"
            ));
        }
    }
    gpu.settle().await.unwrap();
    None
}

/// Every rule under both guards, in f32 and the leanest format, with forced windows too.
#[wasm_bindgen_test]
async fn every_rule_scaled_clipped_and_skipped_matches_its_twin_bit_for_bit() {
    struct Guarded(Vec<RuleRuns>);
    impl RuleVisitor for Guarded {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.push(Box::pin(async {
                let mut failures = Vec::new();
                let gpu = gpu().await;
                let forced = gpu.with_dispatch_limits(FORCED_LIMITS).unwrap();
                let rule = R::every_flag().swap_remove(0);
                for guard in guards() {
                    let (f32, lean) = (Precision::default(), Precision::lean());
                    failures.extend(compare_guarded(&gpu, &rule, &f32, guard, 1025).await);
                    failures.extend(compare_guarded(&gpu, &rule, &lean, guard, 3).await);
                    failures.extend(compare_guarded(&forced, &rule, &lean, guard, 2051).await);
                }
                failures
            }));
        }
    }
    let mut guarded = Guarded(Vec::new());
    visit_rules(&mut guarded);
    run_all(guarded.0).await;
}
