//! `CpuParamSet`, the CPU twin of a parameter set: against a guarded GPU `ParamSet` (two
//! groups, awkward sizes, a loss scaler with norm clipping and a skipped step), and bit for
//! bit against the per-tensor `CpuOptimizer`s under one `CpuGuard` it stands for.

mod common;

use fused_optim::{
    Adam, ClipGradNorm, CpuGuard, CpuOptimizer, CpuParamSet, Error, GpuContext, GradGuard,
    GradScaler, ParamGroup, ParamLayout, ParamSet, Precision, TensorSlot,
};

/// Awkward sizes: one element, one past a block and a workgroup's vec4s, one past 1024.
const TENSORS: [(&str, usize); 6] = [
    ("embed.weight", 1025),
    ("embed.bias", 33),
    ("block.weight", 2051),
    ("block.bias", 1),
    ("norm.weight", 7),
    ("head.bias", 3),
];

const STEPS: u64 = 6;

/// The step whose grads hold an inf, which the scaler skips.
const INF_STEP: u64 = 3;

/// Two groups: decayed weights at one learning rate, the rest at another, without decay.
fn groups(precision: &Precision) -> Vec<ParamGroup<Adam>> {
    let names = |weights: bool| -> Vec<&str> {
        TENSORS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| (name.ends_with("weight") && !name.starts_with("norm")) == weights)
            .collect()
    };
    let decayed = Adam {
        lr: 0.01,
        weight_decay: 0.1,
        ..Adam::default()
    };
    let rest = Adam {
        lr: 0.003,
        ..Adam::default()
    };
    vec![
        ParamGroup::new(decayed, names(true)).with_precision(precision.clone()),
        ParamGroup::new(rest, names(false)).with_precision(precision.clone()),
    ]
}

/// A scaler that grows every other clean step and backs off at the inf, with clipping by
/// global norm tight enough to clip.
fn guard() -> GradGuard {
    GradGuard::new()
        .with_scaler(
            GradScaler::new()
                .with_init_scale(1024.0)
                .with_growth_interval(2),
        )
        .with_clip_norm(ClipGradNorm::new(1.0))
}

/// Packed values of every tensor (random, from `seed`), zero in the padding.
fn packed(layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut values = vec![0.0; layout.len() as usize];
    for (k, slot) in layout.tensors().iter().enumerate() {
        let tensor = common::random_nonzero(slot.len as usize, seed + 100 * k as u64);
        values[slot.range()].copy_from_slice(&tensor);
    }
    values
}

/// Step `step`'s packed grads, scaled by the loss scale `scale` (as the backward pass of a
/// scaled loss makes them), with an inf in the last element of the last tensor at
/// [`INF_STEP`].
fn scaled_grads(layout: &ParamLayout, step: u64, scale: f32) -> Vec<f32> {
    let mut grads: Vec<f32> = packed(layout, 1000 * step)
        .into_iter()
        .map(|g| g * scale)
        .collect();
    if step == INF_STEP {
        let last = layout.tensors().last().unwrap().range().end - 1;
        grads[last] = f32::INFINITY;
    }
    grads
}

/// Each group's learning rate at step `step`, as a scheduler would set it.
fn lrs(step: u64) -> [f64; 2] {
    [0.01 / step as f64, 0.003 * step as f64]
}

/// [`STEPS`] steps of a GPU set in `precision` and its twin under the guard: the statuses
/// compare bit for bit after every step; returns the GPU set, its params and the twin's.
fn step_both(
    gpu: &GpuContext,
    precision: &Precision,
) -> (ParamSet<Adam>, CpuParamSet<Adam>, Vec<u8>, Vec<u8>) {
    let mut set = ParamSet::new(gpu, &TENSORS, groups(precision))
        .unwrap()
        .with_grad_guard(guard())
        .unwrap();
    let mut twin = CpuParamSet::new(&TENSORS, groups(precision))
        .unwrap()
        .with_grad_guard(guard())
        .unwrap();
    let layout = set.layout().clone();
    assert_eq!(twin.layout(), &layout);
    let mut params_cpu = precision.params.encode(&packed(&layout, 1));
    let params = gpu.upload_bytes("params", &params_cpu).unwrap();
    let zeros = precision.grads.encode(&vec![0.0; layout.len() as usize]);
    let grads = gpu.upload_bytes("grads", &zeros).unwrap();
    for step in 1..=STEPS {
        for (group, lr) in lrs(step).into_iter().enumerate() {
            set.set_group_lr(group, lr).unwrap();
            twin.set_group_lr(group, lr).unwrap();
        }
        let scale = twin.loss_scale().unwrap();
        let grads_cpu = precision.grads.encode(&scaled_grads(&layout, step, scale));
        gpu.queue().write_buffer(&grads, 0, &grads_cpu);
        set.step(&params, &grads).unwrap();
        twin.step_bytes(&mut params_cpu, &grads_cpu).unwrap();
        let (got, want) = (
            set.read_grad_status().unwrap().unwrap(),
            twin.grad_status().unwrap(),
        );
        assert_eq!(
            common::status_bits(&got),
            common::status_bits(&want),
            "[{precision}] status after step {step}: {got:?} against {want:?}"
        );
    }
    let status = twin.grad_status().unwrap();
    assert_eq!((status.applied, status.skipped), (STEPS as u32 - 1, 1));
    assert_eq!(twin.step_count(), STEPS - 1);
    let params_gpu = gpu.download_bytes(&params).unwrap();
    (set, twin, params_gpu, params_cpu)
}

/// Each tensor's state `name` of the set and the twin, by name and by index alike.
fn states(
    set: &ParamSet<Adam>,
    twin: &CpuParamSet<Adam>,
    name: &str,
    index: usize,
    slot: &TensorSlot,
) -> (Vec<f32>, Vec<f32>) {
    let (got, want) = (
        set.read_state(name, &slot.name).unwrap(),
        twin.read_state(name, &slot.name).unwrap(),
    );
    assert_eq!(twin.read_state(name, index).unwrap(), want);
    (got, want)
}

/// In f32, on the shared device and with forced windows: params, every state of every
/// tensor and `step` within the twins' tolerance, statuses bit for bit, the skipped step
/// skipped by every group, and the padding between tensors still zero.
#[test]
fn a_guarded_set_matches_its_twin() {
    for gpu in [common::gpu().clone(), common::forced_windows()] {
        let (set, twin, params_gpu, params_cpu) = step_both(&gpu, &Precision::default());
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&params_gpu);
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(&params_cpu);
        let windows = set.dispatches_per_step();
        assert_eq!(twin.state_names(), set.state_names());
        for (index, slot) in set.layout().tensors().iter().enumerate() {
            let what = format!("{} ({windows} dispatches)", slot.name);
            common::assert_twin_close(&what, &got[slot.range()], &want[slot.range()]);
            for name in set.state_names() {
                let (got, want) = states(&set, &twin, name, index, slot);
                assert_eq!(got.len(), want.len(), "{what} {name}");
                common::assert_twin_close(&format!("{what} {name}"), &got, &want);
            }
        }
        let mut padding = got;
        for slot in set.layout().tensors() {
            padding[slot.range()].fill(0.0);
        }
        assert!(padding.iter().all(|&p| p == 0.0), "padding changed");
    }
}

/// In bf16 params with a remainder master and 8-bit state, bit for bit: stochastic block
/// codes draw their random points from each element's place in its group's run, as the
/// twin's group-wide `CpuOptimizer`s do (per-tensor twins would draw others).
#[test]
fn a_guarded_set_in_8_bit_state_matches_its_twin_bit_for_bit() {
    let precision: Precision = "bf16,master=remainder,state=8bit".parse().unwrap();
    let (set, twin, params_gpu, params_cpu) = step_both(common::gpu(), &precision);
    assert!(params_gpu == params_cpu, "bytes of the params differ");
    for (index, slot) in set.layout().tensors().iter().enumerate() {
        for name in set.state_names() {
            let (got, want) = states(&set, &twin, name, index, slot);
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g.to_bits() != w.to_bits())
                .count();
            assert_eq!(differ, 0, "{} {name}: elements differ", slot.name);
        }
    }
}

/// The twin is the per-tensor twins the tests used before it, bit for bit: one
/// `CpuOptimizer` per tensor with its group's rule, stepped with what one `CpuGuard` made of
/// every group's packed run of grads.
#[test]
fn the_twin_is_the_per_tensor_twins_under_one_guard_bit_for_bit() {
    let precision = Precision::default();
    let mut twin = CpuParamSet::new(&TENSORS, groups(&precision))
        .unwrap()
        .with_grad_guard(guard())
        .unwrap();
    let layout = twin.layout().clone();
    let rules: Vec<Adam> = groups(&precision).into_iter().map(|g| g.rule).collect();
    let mut tensors: Vec<(TensorSlot, CpuOptimizer<Adam>)> = layout
        .tensors()
        .iter()
        .map(|slot| {
            let cpu = CpuOptimizer::new(rules[slot.group].clone(), slot.len as usize);
            (slot.clone(), cpu.unwrap())
        })
        .collect();
    let mut guard = CpuGuard::new(guard()).unwrap();
    let mut params_set = packed(&layout, 1);
    let mut params_tensors = params_set.clone();
    for step in 1..=STEPS {
        let lrs = lrs(step);
        for (group, lr) in lrs.into_iter().enumerate() {
            twin.set_group_lr(group, lr).unwrap();
        }
        let grads = scaled_grads(&layout, step, guard.status().scale);
        twin.step(&mut params_set, &grads).unwrap();
        let runs: Vec<&[f32]> = (0..layout.group_count())
            .map(|g| {
                let run = layout.group_range(g);
                &grads[run.start as usize..run.end as usize]
            })
            .collect();
        let grad_step = guard.check(&runs);
        for (slot, cpu) in &mut tensors {
            cpu.set_lr(lrs[slot.group]).unwrap();
            let (params, grads) = (&mut params_tensors[slot.range()], &grads[slot.range()]);
            cpu.step_guarded(
                bytemuck::cast_slice_mut(params),
                bytemuck::cast_slice(grads),
                &grad_step,
            )
            .unwrap();
        }
        assert_eq!(
            common::status_bits(&twin.grad_status().unwrap()),
            common::status_bits(&guard.status()),
            "status after step {step}"
        );
    }
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&params_set), bits(&params_tensors), "params");
    for (index, (slot, cpu)) in tensors.iter().enumerate() {
        assert_eq!(twin.step_count(), cpu.step_count());
        for name in cpu.state_names() {
            let want = cpu.read_state(name, 0).unwrap();
            assert_eq!(
                bits(&twin.read_state(name, index).unwrap()),
                bits(&want),
                "{} {name}",
                slot.name
            );
        }
    }
}

/// What the twin refuses, as the GPU set does, changing nothing: packed buffers of the
/// wrong size (the guard's scale and counts stay), groups disagreeing on the params' format,
/// unknown tensors and groups.
#[test]
fn refusals_are_typed_and_change_nothing() {
    let precision = Precision::default();
    let mut twin = CpuParamSet::new(&TENSORS, groups(&precision))
        .unwrap()
        .with_grad_guard(guard())
        .unwrap();
    let len = twin.layout().len() as usize;
    let mut params = vec![0.5; len];
    let before = twin.grad_status();
    let error = twin
        .step(&mut params[1..], &vec![0.1; len - 1])
        .unwrap_err();
    assert!(matches!(error, Error::StateMismatch { .. }), "{error:?}");
    let error = twin.step(&mut params, &vec![0.1; len + 1]).unwrap_err();
    assert!(matches!(error, Error::StateMismatch { .. }), "{error:?}");
    assert_eq!(twin.grad_status(), before);
    assert!(params.iter().all(|&p| p == 0.5));
    assert_eq!(twin.step_count(), 0);
    let mut mixed = groups(&precision);
    mixed[1].precision = "bf16".parse().unwrap();
    let error = CpuParamSet::new(&TENSORS, mixed).unwrap_err();
    assert!(matches!(error, Error::FormatMismatch { .. }), "{error:?}");
    let error = twin.read_state("exp_avg", "missing").unwrap_err();
    assert!(matches!(error, Error::UnknownTensor { .. }), "{error:?}");
    let error = twin.read_state("exp_avg", TENSORS.len()).unwrap_err();
    assert!(matches!(error, Error::UnknownTensor { .. }), "{error:?}");
    let error = twin.set_group_lr(2, 0.1).unwrap_err();
    assert!(
        matches!(error, Error::UnknownGroup { group: 2 }),
        "{error:?}"
    );
    let error = twin.set_lr(-1.0).unwrap_err();
    assert!(
        matches!(error, Error::InvalidConfig { field: "lr", .. }),
        "{error:?}"
    );
    assert_eq!(
        twin.group_twins()
            .iter()
            .map(|g| g.rule().lr)
            .collect::<Vec<_>>(),
        [0.01, 0.003]
    );
}
