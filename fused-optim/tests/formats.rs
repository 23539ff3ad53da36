//! Every registered rule in every storage format on the GPU against its CPU twin, bit for bit:
//! params (their bytes), master weights and every state. Sizes are not multiples of 2, 4 or
//! 256, so 16-bit pairs, vec4s and 8-bit blocks end mid-way; forced windows of 1004 elements
//! (not a multiple of 8 or 256) make the plan cut whole pairs and blocks; five steps with the
//! learning rate changed before each.
//!
//! Bit for bit: the codecs are integer arithmetic or exact f32 operations on the GPU and in the
//! twin alike, the 8-bit encoder compares with midpoints times absmax (one correctly rounded
//! product, no division), and on lavapipe and llvmpipe the rules' f32 arithmetic matches the
//! twins exactly (tests/twin.rs holds other adapters to a tolerance instead).

mod common;

use fused_optim::{
    visit_rules, CpuOptimizer, Dtype, GpuContext, Optimizer, ParamGroup, ParamSet, Precision,
    RegisteredRule, RuleVisitor, StepValues, UpdateRule,
};

const STEPS: usize = 5;
const LEARNING_RATES: [f64; STEPS] = [0.1, 0.03, 0.2, 0.05, 0.12];

fn contexts() -> Vec<(GpuContext, &'static [usize])> {
    let uniform = common::forced_windows()
        .with_step_values(StepValues::UniformCopy)
        .unwrap();
    vec![
        (common::gpu().clone(), &[1, 3, 1025, 4099]),
        (common::forced_windows(), &[1005, 2011, 3013]),
        (uniform, &[1025]),
    ]
}

/// Where two equally long sequences first differ, and how many elements differ.
fn differences<T: PartialEq>(got: &[T], want: &[T]) -> Option<(usize, usize)> {
    assert_eq!(got.len(), want.len());
    let mut differ = (0..got.len()).filter(|&i| got[i] != want[i]);
    let first = differ.next()?;
    Some((first, 1 + differ.count()))
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn check<R: UpdateRule>(rule: &R, precision: &Precision) {
    for (gpu, sizes) in contexts() {
        for &len in sizes {
            let what = format!("{} [{precision}] len {len}", rule.name());
            let seed = len as u64;
            let mut params_cpu = precision
                .params
                .encode(&common::random_nonzero(len, seed));
            let params = gpu.upload_bytes("params", &params_cpu).unwrap();
            let grads = gpu
                .upload_bytes("grads", &precision.grads.encode(&vec![0.0; len]))
                .unwrap();
            let mut cpu = CpuOptimizer::with_precision(rule.clone(), precision.clone(), len)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut optimizer =
                Optimizer::with_precision(&gpu, rule.clone(), precision.clone(), len).unwrap();
            for (step, lr) in LEARNING_RATES.into_iter().enumerate() {
                let grads_cpu = precision
                    .grads
                    .encode(&common::random_nonzero(len, seed + 1 + step as u64));
                gpu.queue().write_buffer(&grads, 0, &grads_cpu);
                cpu.set_lr(lr).unwrap();
                optimizer.set_lr(lr).unwrap();
                cpu.step_bytes(&mut params_cpu, &grads_cpu).unwrap();
                optimizer.step(&params, &grads).unwrap();
            }
            let got = gpu.download_bytes(&params).unwrap();
            if let Some((first, count)) = differences(&got, &params_cpu) {
                panic!("{what}: {count} param bytes differ, the first at byte {first}");
            }
            let master = optimizer.read_master(&params).unwrap();
            assert_eq!(
                master.as_deref().map(bits),
                cpu.master(&params_cpu).as_deref().map(bits),
                "{what}: master weights differ"
            );
            for name in optimizer.state_names() {
                let got = bits(&optimizer.read_state(name).unwrap());
                let want = bits(&cpu.state(name).unwrap());
                if let Some((first, count)) = differences(&got, &want) {
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
                let want = &twin.state(name).unwrap()[start..start + tensor.len as usize];
                let got = set.read_state(name, &tensor.name).unwrap();
                assert_eq!(bits(&got), bits(want), "{name} of {}", tensor.name);
            }
        }
    }
}
