//! Every registered rule in every storage format on the GPU against its CPU twin, bit for bit:
//! params (their bytes), master weights and every state. Sizes are not multiples of 2, 4 or
//! 32, so 16-bit pairs, vec4s and 8-bit and 4-bit blocks end mid-way; forced windows of 1004
//! elements (not a multiple of 8 or 32) make the plan cut whole pairs and blocks; five steps
//! with the learning rate changed before each.
//!
//! Bit for bit: the 16-bit codecs and the master correction are integer arithmetic or exact
//! f32 operations on the GPU and in the twin alike, the block codes' decoding is correctly
//! rounded products, and on lavapipe and llvmpipe the rules' f32 arithmetic and the block
//! encoders' division and square roots match the twins exactly (tests/twin.rs holds other
//! adapters to a tolerance instead).

mod common;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    CpuOptimizer, Dtype, GpuContext, Optimizer, ParamGroup, ParamSet, Precision, StateFormat,
    StepValues, UpdateRule,
};

const STEPS: usize = 5;
const LEARNING_RATES: [f64; STEPS] = [0.1, 0.03, 0.2, 0.05, 0.12];

fn contexts() -> Vec<(GpuContext, &'static [usize])> {
    let uniform = common::forced_windows()
        .with_step_values(StepValues::UniformCopy)
        .unwrap();
    vec![
        (common::gpu().clone(), &[1, 31, 33, 129, 1025]),
        (common::forced_windows(), &[1005, 2011, 3013]),
        (uniform, &[1025]),
    ]
}

fn check<R: UpdateRule>(rule: &R, precision: &Precision) {
    for (gpu, sizes) in contexts() {
        for &len in sizes {
            let what = format!("{} [{precision}] len {len}", rule.name());
            let seed = len as u64;
            let mut pair = common::SideBySide::new(&gpu, rule, precision, len, seed);
            for (step, lr) in LEARNING_RATES.into_iter().enumerate() {
                pair.step(lr, seed + 1 + step as u64);
            }
            let common::SideBySide {
                params_cpu,
                params,
                cpu,
                optimizer,
                ..
            } = pair;
            let got = gpu.download_bytes(&params).unwrap();
            if let Some((first, count)) = common::differences(&got, &params_cpu) {
                panic!("{what}: {count} param bytes differ, the first at byte {first}");
            }
            let master = optimizer.read_master(&params).unwrap();
            assert_eq!(
                master.as_deref().map(common::bits),
                cpu.master(&params_cpu).as_deref().map(common::bits),
                "{what}: master weights differ"
            );
            for name in optimizer.state_names() {
                let got = common::bits(&optimizer.read_state(name, 0).unwrap());
                let want = common::bits(&cpu.read_state(name, 0).unwrap());
                if let Some((first, count)) = common::differences(&got, &want) {
                    panic!(
                        "{what}: {count} values of {name} differ, the first at {first}: {:e} \
                         against {:e}",
                        f32::from_bits(got[first]),
                        f32::from_bits(want[first])
                    );
                }
            }
        }
    }
}

/// The registry is what the tests walk: every registered state format is some preset's (so
/// the bit-exact test below runs it in every rule), has a name of its own, and has a row in
/// the README's table of state formats with its bytes per element.
#[test]
fn every_registered_state_format_is_tested_and_documented() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    for (k, &format) in StateFormat::ALL.iter().enumerate() {
        let name = format.name();
        assert!(
            Precision::presets().iter().any(|(_, p)| p.state == format),
            "no preset has state={name}"
        );
        assert!(StateFormat::ALL[..k].iter().all(|f| f.name() != name));
        let row = readme
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("no README row for `{name}`"));
        let per_element = format.moved_bytes(1 << 20) as f64 / (1 << 20) as f64;
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert_eq!(last, per_element.to_string(), "{row}");
    }
}

/// Every flag combination in the leanest precision; the first combination in every other
/// non-f32 preset (f32 is tests/twin.rs's).
#[test]
fn every_rule_in_every_format_matches_its_twin_bit_for_bit() {
    struct Formats<'scope, 'env> {
        scope: &'scope std::thread::Scope<'scope, 'env>,
    }
    impl RuleVisitor for Formats<'_, '_> {
        fn visit<R: RegisteredRule>(&mut self) {
            self.scope.spawn(|| {
                let configs = R::every_flag();
                for rule in &configs {
                    check(rule, &Precision::lean());
                }
                for (_, precision) in Precision::presets().into_iter().skip(1) {
                    check(&configs[0], &precision);
                }
            });
        }
    }
    std::thread::scope(|scope| visit_rules(&mut Formats { scope }));
}

/// A parameter set whose groups share bf16 params and grads but keep their own master and
/// state formats: large weights in 8-bit with the remainder master, small biases in f32 with
/// an f32 master. Each group's run matches a twin of that run.
#[test]
fn groups_keep_their_own_master_and_state_formats() {
    let gpu = common::forced_windows();
    let tensors = [("w1", 3001), ("b1", 7), ("w2", 1030), ("b2", 1)];
    let lean = Precision::lean();
    let biases = Precision::mixed(Dtype::Bf16);
    let rule = fused_optim::Adam::adamw();
    let groups = vec![
        ParamGroup::new(rule.clone(), ["w1", "w2"]).with_precision(lean.clone()),
        ParamGroup::new(rule.clone(), ["b1", "b2"]).with_precision(biases.clone()),
    ];
    let mut set = ParamSet::new(&gpu, &tensors, groups).unwrap();
    let len = set.layout().len() as usize;
    let mut params_cpu = Dtype::Bf16.encode(&common::random_nonzero(len, 1));
    let params = gpu.upload_bytes("params", &params_cpu).unwrap();
    let grads = gpu
        .upload_bytes("grads", &Dtype::Bf16.encode(&vec![0.0; len]))
        .unwrap();
    let mut twins: Vec<(std::ops::Range<usize>, CpuOptimizer<_>)> = [lean, biases]
        .into_iter()
        .enumerate()
        .map(|(group, precision)| {
            let range = set.layout().group_range(group);
            let range = range.start as usize..range.end as usize;
            let twin = CpuOptimizer::with_precision(rule.clone(), precision, range.len()).unwrap();
            (range, twin)
        })
        .collect();
    for step in 0..STEPS {
        let grads_cpu = Dtype::Bf16.encode(&common::random_nonzero(len, 10 + step as u64));
        gpu.queue().write_buffer(&grads, 0, &grads_cpu);
        set.step(&params, &grads).unwrap();
        for (range, twin) in &mut twins {
            let bytes = 2 * range.start..2 * range.end;
            twin.step_bytes(&mut params_cpu[bytes.clone()], &grads_cpu[bytes])
                .unwrap();
        }
    }
    let got = gpu.download_bytes(&params).unwrap();
    for (range, twin) in &twins {
        let bytes = 2 * range.start..2 * range.end;
        assert_eq!(got[bytes.clone()], params_cpu[bytes], "params of {range:?}");
        for tensor in set.layout().tensors() {
            if !range.contains(&(tensor.offset as usize)) {
                continue;
            }
            let start = tensor.offset as usize - range.start;
            for name in ["exp_avg", "exp_avg_sq"] {
                let want = &twin.read_state(name, 0).unwrap()[start..start + tensor.len as usize];
                let got = set.read_state(name, &tensor.name).unwrap();
                assert_eq!(
                    common::bits(&got),
                    common::bits(want),
                    "{name} of {}",
                    tensor.name
                );
            }
        }
    }
}

/// Relative distance between two vectors: |got - want| / |want| (Euclidean norms).
fn relative_distance(got: &[f32], want: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        diff += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    (diff / norm).sqrt()
}

/// 1,000 Adam steps on a fixed noisy quadratic (curvatures 0.1 to 10, targets and gradient
/// noise from a fixed seed), once with f32 state and once with 8-bit block-wise state,
/// through the CPU twin (bit for bit the GPU's, above). Both runs take the f32 run's
/// gradients, so their states differ only by what quantization lost; the 8-bit state is
/// measured against the f32 one (relative Euclidean distance) at every tenth step.
///
/// Bound, and why: near the top of a block a code step is 1.6% of the scale (2/127 of the
/// square-root companded `exp_avg`, 4/254 of the fourth-root companded `exp_avg_sq`), and
/// coarser below; stochastic rounding keeps each average unbiased, so the error is the noise
/// of a few steps' rounding, not a drift. `exp_avg_sq` squares gradients whose curvatures span
/// 100x, so its blocks span four decades. Measured worst: 2.4% for exp_avg and 12.9% for
/// exp_avg_sq (the dynamic map this code replaced: 3.6% and 15%). The bounds, 5% and 20%,
/// leave room for other seeds and still fail at once if blocks, signs or codes go wrong
/// (errors of order 1).
#[test]
fn eight_bit_state_stays_close_to_f32_over_1000_adam_steps() {
    use rand::{Rng, SeedableRng};
    let len = 4099;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let curvature: Vec<f32> = (0..len).map(|_| rng.random_range(0.1..10.0)).collect();
    let target: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    let rule = fused_optim::Adam {
        lr: 1e-2,
        ..Default::default()
    };
    let eight_bit: Precision = "f32,state=8bit".parse().unwrap();
    let mut runs: Vec<(Vec<f32>, CpuOptimizer<_>)> = [Precision::f32(), eight_bit]
        .into_iter()
        .map(|precision| {
            let twin = CpuOptimizer::with_precision(rule.clone(), precision, len).unwrap();
            (vec![0.0; len], twin)
        })
        .collect();
    let mut worst = [0.0f64; 2];
    for step in 0..1000 {
        // Both runs see the f32 run's gradients, so their states differ only by what
        // quantization lost along the way.
        let grads: Vec<f32> = (0..len)
            .map(|i| curvature[i] * (runs[0].0[i] - target[i]) + rng.random_range(-0.5..0.5))
            .collect();
        for (params, twin) in &mut runs {
            twin.step(params, &grads).unwrap();
        }
        if step % 10 == 9 {
            for (worst, name) in worst.iter_mut().zip(["exp_avg", "exp_avg_sq"]) {
                let want = runs[0].1.read_state(name, 0).unwrap();
                let got = runs[1].1.read_state(name, 0).unwrap();
                *worst = worst.max(relative_distance(&got, &want));
            }
        }
    }
    let params = relative_distance(&runs[1].0, &runs[0].0);
    println!(
        "8-bit vs f32 over 1000 Adam steps: exp_avg {:.2e}, exp_avg_sq {:.2e}, params {params:.2e}",
        worst[0], worst[1]
    );
    assert!(worst[0] < 0.05, "exp_avg drifted {:e} from f32", worst[0]);
    assert!(
        worst[1] < 0.20,
        "exp_avg_sq drifted {:e} from f32",
        worst[1]
    );
}

/// `state_bytes()` is exactly what the optimizer allocated (wgpu's memory counter, on a device
/// of its own) for every preset, and `bytes_per_step()` is each format's bytes per element:
/// params read and written, grads read, master and each state read and written, 8-bit state
/// one byte per element and 2 per block of 32.
#[test]
fn memory_and_bytes_are_exact_for_every_precision() {
    let own = GpuContext::new().unwrap();
    let counters = || {
        own.device()
            .get_internal_counters()
            .hal
            .buffer_memory
            .read()
    };
    let counted = own.adapter_info().backend != wgpu::Backend::Gl;
    let len = 100_003u64;
    let rule = fused_optim::Adam {
        amsgrad: true,
        ..Default::default()
    };
    let slots = ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
    let settle = || {
        own.queue().submit([]);
        own.wait().unwrap();
    };
    for (name, precision) in Precision::presets() {
        settle();
        let before = counters();
        let optimizer =
            Optimizer::with_precision(&own, rule.clone(), precision.clone(), len as usize).unwrap();
        settle();
        let allocated = counters() - before;
        let stored = precision.stored_bytes(len, slots);
        let values = optimizer.state_bytes() - stored;
        assert!(values < 1024, "{name}: {} bytes besides the state", values);
        if counted {
            assert_eq!(optimizer.state_bytes() as isize, allocated, "{name}");
        }
        // Figures worked out by hand, to check the formats' declarations against.
        let per_slot = match precision.state.name() {
            "f32" => 8 * len,
            "bf16" => 4 * len,
            "8bit" => 2 * (len + 2 * len.div_ceil(32)),
            "4bit" => 2 * (len.div_ceil(2) + len.div_ceil(32)),
            other => panic!("no figures worked out for `{other}`"),
        };
        let weights = len
            * (2 * precision.params.element_bytes()
                + precision.grads.element_bytes()
                + 2 * precision.master_bytes());
        assert_eq!(optimizer.bytes_per_step(), weights + 3 * per_slot, "{name}");
    }
    // The headline figures, per parameter: Adam in the leanest precision moves about 14 bytes
    // a step against 28 in f32, and stores 2.125 bytes of state (+2 of master).
    let lean = Precision::lean();
    let adam = ["exp_avg", "exp_avg_sq"];
    let per_param = |bytes: u64| bytes as f64 / len as f64;
    assert!((per_param(lean.bytes_per_step(len, adam)) - 14.25).abs() < 0.01);
    assert_eq!(Precision::f32().bytes_per_step(len, adam), 28 * len);
    let state = lean.stored_bytes(len, adam) - Dtype::Bf16.buffer_bytes(len);
    assert!((per_param(state) - 2.125).abs() < 0.01);
}

/// What a caller can get wrong about formats is refused before anything runs, naming it.
#[test]
fn format_errors_are_typed() {
    let gpu = common::gpu();
    let rule = fused_optim::Adam::default();
    // A 16-bit buffer must be ceil(len / 2) u32 words: f32-sized buffers are refused.
    let mut optimizer = Optimizer::with_precision(gpu, rule.clone(), Precision::lean(), 5).unwrap();
    let f32_sized = gpu.upload("params", &[0.5; 5]).unwrap();
    let grads = gpu
        .upload_bytes("grads", &Dtype::Bf16.encode(&[0.1; 5]))
        .unwrap();
    let error = optimizer.step(&f32_sized, &grads).unwrap_err();
    assert!(
        matches!(&error, fused_optim::Error::FormatSize { buffer, expected: 12, got: 20, .. } if buffer == "params"),
        "{error}"
    );
    assert_eq!(optimizer.step_count(), 0);
    // Groups of one packed buffer must agree on its format.
    let tensors = [("w", 10), ("b", 3)];
    let groups = vec![
        ParamGroup::new(rule.clone(), ["w"]).with_precision(Precision::lean()),
        ParamGroup::new(rule.clone(), ["b"]),
    ];
    let error = ParamSet::new(gpu, &tensors, groups).err().unwrap();
    assert!(
        matches!(
            error,
            fused_optim::Error::FormatMismatch {
                buffer: "params",
                first: 0,
                second: 1,
                ..
            }
        ),
        "{error}"
    );
    // Combinations that mean nothing, and slots the rule does not have.
    for text in [
        "f32,master=f32",
        "f16,master=remainder",
        "bf16,momentum_buffer=8bit",
    ] {
        let precision: Precision = text.parse().unwrap();
        let error = Optimizer::with_precision(gpu, rule.clone(), precision.clone(), 5)
            .err()
            .unwrap();
        assert!(
            matches!(error, fused_optim::Error::InvalidPrecision { .. }),
            "{text}: {error}"
        );
        assert!(CpuOptimizer::with_precision(rule.clone(), precision, 5).is_err());
    }
}

/// The master starts as the params, before any step and after a first step that a grad guard
/// skipped: read back, it is the params decoded, as the twin says, for every master at sizes
/// that end mid-pair and mid-vec4.
#[test]
fn the_master_starts_as_the_params() {
    let gpu = common::gpu();
    let skipping = fused_optim::GradGuard::new().with_scaler(fused_optim::GradScaler::default());
    for (name, precision) in Precision::presets() {
        if precision.master == fused_optim::Master::None {
            continue;
        }
        for len in [1, 3, 1025] {
            let what = format!("{name} len {len}");
            let params_cpu = precision.params.encode(&common::random_nonzero(len, 9));
            let params = gpu.upload_bytes("params", &params_cpu).unwrap();
            let twin =
                CpuOptimizer::with_precision(fused_optim::Adam::default(), precision.clone(), len)
                    .unwrap();
            let want = precision.params.decode(&params_cpu, len);
            assert_eq!(
                twin.master(&params_cpu).as_deref(),
                Some(&want[..]),
                "{what}"
            );
            let mut adam = Optimizer::with_precision(
                gpu,
                fused_optim::Adam::default(),
                precision.clone(),
                len,
            )
            .unwrap()
            .with_grad_guard(skipping)
            .unwrap();
            assert_eq!(
                adam.read_master(&params).unwrap(),
                Some(want.clone()),
                "{what}"
            );
            let mut grads = vec![0.5; len];
            grads[len - 1] = f32::INFINITY;
            let grads = gpu
                .upload_bytes("grads", &precision.grads.encode(&grads))
                .unwrap();
            adam.step(&params, &grads).unwrap();
            assert_eq!(adam.read_grad_status().unwrap().unwrap().skipped, 1);
            assert_eq!(
                adam.read_master(&params).unwrap(),
                Some(want),
                "{what}: skipped"
            );
        }
    }
}

/// One inf grad, one NaN grad and one finite grad whose square overflows f32, each in its own
/// block of 32, in every rule with every slot in blocks: the GPU equals its twin (NaN for
/// NaN), and after three steps every other element's param and state are finite, as with
/// f32 state. Scales come from the finite values, and a non-finite value has a code of its
/// own, so nothing spreads through a block. Each rule in the flag combination that keeps the
/// most slots, so that every slot is covered, in every block format.
#[test]
fn a_non_finite_value_stays_in_its_element_of_a_block() {
    struct NonFinite;
    impl RuleVisitor for NonFinite {
        fn visit<R: RegisteredRule>(&mut self) {
            let kept = |rule: &R| {
                R::STATE_SLOTS
                    .iter()
                    .filter(|s| rule.keeps_state(s))
                    .count()
            };
            let rule = R::every_flag()
                .into_iter()
                .max_by_key(kept)
                .expect("a rule has a configuration");
            // Every registered block format, and 8-bit state beside each compact master.
            let blocks = StateFormat::ALL
                .iter()
                .filter(|format| format.blocks().is_some())
                .map(|format| format!("f32,state={}", format.name()));
            let masters =
                ["remainder", "8bit"].map(|master| format!("bf16,master={master},state=8bit"));
            for precision in blocks.chain(masters) {
                non_finite_stays(&rule, &precision.parse().unwrap());
            }
        }
    }
    visit_rules(&mut NonFinite);
}

fn non_finite_stays<R: UpdateRule>(rule: &R, precision: &Precision) {
    let gpu = common::gpu();
    let len = 129;
    let poisoned = [(5, f32::INFINITY), (40, f32::NAN), (70, 1e20)];
    let what = format!("{} [{precision}]", rule.name());
    let common::SideBySide {
        mut params_cpu,
        params,
        grads,
        mut cpu,
        mut optimizer,
        ..
    } = common::SideBySide::new(gpu, rule, precision, len, 3);
    for step in 0..3 {
        let mut values = common::random_nonzero(len, 4 + step);
        for (index, value) in poisoned {
            values[index] = value;
        }
        let grads_cpu = precision.grads.encode(&values);
        gpu.queue().write_buffer(&grads, 0, &grads_cpu);
        cpu.step_bytes(&mut params_cpu, &grads_cpu).unwrap();
        optimizer.step(&params, &grads).unwrap();
    }
    let same = |got: &[f32], want: &[f32], name: &str| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let equal = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(
                equal,
                "{what}: {name}[{i}] is {g:e} on the GPU, {w:e} in the twin"
            );
            let allowed = poisoned.iter().any(|&(index, _)| index == i);
            assert!(allowed || g.is_finite(), "{what}: {name}[{i}] is {g:e}");
        }
    };
    let got = gpu.download_bytes(&params).unwrap();
    same(
        &precision.params.decode(&got, len),
        &precision.params.decode(&params_cpu, len),
        "param",
    );
    for name in optimizer.state_names() {
        if name != "step" {
            same(
                &optimizer.read_state(name, 0).unwrap(),
                &cpu.read_state(name, 0).unwrap(),
                name,
            );
        }
    }
}
