//! Real sizes on the adapter's own limits: a tensor past the storage-binding limit (lavapipe's
//! is 128 MiB) stepped in windows, and a GPT-2-small-shaped parameter set. Every element is
//! compared with the CPU twin. Each test holds a few GiB, so they take turns. It lives with
//! the benchmark, whose GPT-2 shapes it steps; the helpers are the library tests'.

#[path = "../../fused-optim/tests/common/mod.rs"]
mod common;

use std::sync::Mutex;

use fused_optim::{Adam, CpuOptimizer, Optimizer, ParamSet};
use fused_optim_bench::measure::{gpt2_groups, gpt2_tensors};

/// One big test at a time keeps the binary under 8 GiB.
static BIG: Mutex<()> = Mutex::new(());

/// 50M elements: 200 MB per buffer, past a 128 MiB binding limit, so the step runs in windows;
/// a 33.5M-element window also needs more than 65535 workgroups and is folded.
#[test]
fn adam_past_the_binding_limit_matches_twin() {
    let _turn = BIG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let gpu = common::gpu();
    let len = 50_000_000;
    let rule = Adam {
        lr: 0.1,
        eps: 1e-2,
        weight_decay: 0.3,
        ..Adam::default()
    };
    let mut params_cpu = common::random_nonzero(len, 1);
    let grads_cpu = common::random_nonzero(len, 2);
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &grads_cpu).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule.clone(), len).unwrap();
    let limit = gpu.limits().max_storage_buffer_binding_size;
    if len as u64 * 4 > limit {
        assert!(optimizer.dispatches_per_step() > 1, "expected windows");
    }
    let mut cpu = CpuOptimizer::new(rule, len).unwrap();
    for _ in 0..2 {
        optimizer.step(&params, &grads).unwrap();
        cpu.step(&mut params_cpu, &grads_cpu).unwrap();
    }
    common::assert_twin_close("params", &gpu.download(&params).unwrap(), &params_cpu);
    for state in ["exp_avg", "exp_avg_sq"] {
        common::assert_twin_close(
            state,
            &optimizer.read_state(state, 0).unwrap(),
            &cpu.read_state(state, 0).unwrap(),
        );
    }
}

/// AdamW with weight decay on the matrices and none on biases and norms, three steps with the
/// lr changed before each, against a CPU twin per tensor with its group's hyperparameters.
#[test]
fn gpt2_small_parameter_set_matches_twins() {
    let _turn = BIG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let gpu = common::gpu();
    let tensors = gpt2_tensors(768);
    assert_eq!(tensors.len(), 148);
    let total: usize = tensors.iter().map(|(_, len)| len).sum();
    assert_eq!(total, 124_439_808);
    let rule = Adam {
        lr: 0.1,
        eps: 1e-2,
        betas: (0.8, 0.9),
        weight_decay: 0.3,
        ..Adam::adamw()
    };
    let no_decay = Adam {
        weight_decay: 0.0,
        ..rule.clone()
    };
    let groups = gpt2_groups(&tensors, rule, no_decay);
    let mut set = ParamSet::new(gpu, &tensors, groups).unwrap();
    let layout = set.layout().clone();
    // One dispatch per group and binding window, not per tensor.
    let binding = gpu.limits().max_storage_buffer_binding_size / 4;
    assert!(set.dispatches_per_step() <= 2 + (layout.len() / binding) as usize);

    let mut params_cpu = vec![0.0; layout.len() as usize];
    let mut grads_cpu = vec![0.0; layout.len() as usize];
    for (index, slot) in layout.tensors().iter().enumerate() {
        let seed = 2 * index as u64;
        params_cpu[slot.range()].copy_from_slice(&common::random_nonzero(slot.len as usize, seed));
        grads_cpu[slot.range()]
            .copy_from_slice(&common::random_nonzero(slot.len as usize, seed + 1));
    }
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &grads_cpu).unwrap();
    let mut twins: Vec<_> = layout
        .tensors()
        .iter()
        .map(|slot| CpuOptimizer::new(set.groups()[slot.group].clone(), slot.len as usize).unwrap())
        .collect();
    for lr in [0.1, 0.05, 0.2] {
        set.set_lr(lr).unwrap();
        set.step(&params, &grads).unwrap();
        for (slot, twin) in layout.tensors().iter().zip(&mut twins) {
            twin.set_lr(lr).unwrap();
            let range = slot.range();
            twin.step(&mut params_cpu[range.clone()], &grads_cpu[range])
                .unwrap();
        }
    }
    drop(grads_cpu);
    let got = gpu.download(&params).unwrap();
    assert_eq!(got.len(), params_cpu.len());
    for slot in layout.tensors() {
        common::assert_twin_close(&slot.name, &got[slot.range()], &params_cpu[slot.range()]);
    }
    drop((got, params_cpu));
    for state in ["exp_avg", "exp_avg_sq"] {
        for group in 0..set.groups().len() {
            // Each group keeps its state in buffers of its own, from the group's first element.
            let start = layout.group_range(group).start as usize;
            let got = gpu
                .download(set.state_buffer(state, group).unwrap())
                .unwrap();
            for (slot, twin) in layout.tensors().iter().zip(&twins) {
                if slot.group != group {
                    continue;
                }
                let what = format!("{} {state}", slot.name);
                let range = slot.range().start - start..slot.range().end - start;
                common::assert_twin_close(&what, &got[range], &twin.read_state(state, 0).unwrap());
            }
        }
    }
}
