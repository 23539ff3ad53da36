//! Many tensors per step: packed parameter sets with groups, foreach lists of caller buffers,
//! memory accounting, and the errors registering and stepping them can raise. Every result is
//! compared with the rule's CPU twin applied tensor by tensor with its group's rule.

mod common;

use fused_optim::{
    Adagrad, Adam, CpuOptimizer, Error, ForeachOptimizer, GpuContext, Optimizer, ParamGroup,
    ParamSet, RmsProp, Sgd, UpdateRule,
};

const TOLERANCE: f64 = common::TWIN_TOLERANCE;
const STEPS: usize = 3;

/// Awkward sizes: not multiples of 4, of the workgroup or of the tensor alignment.
const TENSORS: [(&str, usize); 7] = [
    ("embed.weight", 2011),
    ("embed.bias", 3),
    ("block.weight", 1025),
    ("block.bias", 1),
    ("norm.weight", 5),
    ("head.weight", 300),
    ("head.bias", 64),
];

fn is_decayed(name: &str) -> bool {
    name.ends_with("weight") && !name.starts_with("norm")
}

/// The shared context, and one whose forced windows cut the groups into several windows
/// starting off alignment.
fn contexts() -> [GpuContext; 2] {
    [common::gpu().clone(), common::forced_windows()]
}

/// Steps a two-group set (decayed weights; the rest) on the GPU and with per-tensor CPU twins,
/// changing each group's lr before every step, and compares params, every state and the
/// padding between tensors, which must stay zero.
fn check_groups<R: UpdateRule>(decayed: R, rest: R) {
    let names = |decay: bool| {
        TENSORS
            .iter()
            .filter(move |(name, _)| is_decayed(name) == decay)
    };
    for gpu in contexts() {
        let groups = vec![
            ParamGroup::new(decayed.clone(), names(true).map(|(name, _)| *name)),
            ParamGroup::new(rest.clone(), names(false).map(|(name, _)| *name)),
        ];
        let mut set = ParamSet::new(&gpu, &TENSORS, groups).unwrap();
        let layout = set.layout().clone();
        let len = layout.len() as usize;
        let mut params_cpu = vec![0.0; len];
        let mut grads_cpu = vec![0.0; len];
        let mut twins = Vec::new();
        for (index, (name, tensor_len)) in TENSORS.iter().enumerate() {
            let slot = layout.tensor(name).unwrap();
            let seed = 100 * index as u64;
            layout
                .view_mut(&mut params_cpu, name)
                .unwrap()
                .copy_from_slice(&common::random_nonzero(*tensor_len, seed));
            layout
                .view_mut(&mut grads_cpu, name)
                .unwrap()
                .copy_from_slice(&common::random_nonzero(*tensor_len, seed + 1));
            let rule = set.groups()[slot.group].clone();
            twins.push((slot.clone(), CpuOptimizer::new(rule, *tensor_len).unwrap()));
        }
        let params = gpu.upload("params", &params_cpu).unwrap();
        let grads = gpu.upload("grads", &grads_cpu).unwrap();
        for step in 0..STEPS {
            let lrs = [0.1 / (step + 1) as f64, 0.05 * (step + 1) as f64];
            for (group, lr) in lrs.into_iter().enumerate() {
                set.set_group_lr(group, lr).unwrap();
            }
            set.step(&params, &grads).unwrap();
            for (slot, twin) in &mut twins {
                twin.set_lr(lrs[slot.group]).unwrap();
                let range = slot.range();
                twin.step(&mut params_cpu[range.clone()], &grads_cpu[range])
                    .unwrap();
            }
        }
        let got = gpu.download(&params).unwrap();
        let windows = set.dispatches_per_step();
        for (slot, twin) in &twins {
            let mut compared = vec![(
                "params",
                got[slot.range()].to_vec(),
                params_cpu[slot.range()].to_vec(),
            )];
            for state in twin.state_names() {
                compared.push((
                    state,
                    set.read_state(state, &slot.name).unwrap(),
                    twin.read_state(state, 0).unwrap(),
                ));
            }
            for (state, got, want) in compared {
                let error = common::worst_relative_error(&got, &want);
                assert!(
                    error <= TOLERANCE,
                    "{} group {} ({windows} windows): {} {state} off by {error:e}",
                    decayed.name(),
                    slot.group,
                    slot.name
                );
            }
        }
        let mut padding = got;
        for slot in layout.tensors() {
            padding[slot.range()].fill(0.0);
        }
        assert!(
            padding.iter().all(|&p| p == 0.0),
            "padding between tensors changed"
        );
    }
}

#[test]
fn sgd_groups_match_twins() {
    let decayed = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.3,
        ..Sgd::default()
    };
    check_groups(
        decayed,
        Sgd {
            maximize: true,
            ..Sgd::default()
        },
    );
}

#[test]
fn adam_groups_match_twins() {
    // AdamW with decay for weights; no decay but amsgrad for the rest, so one group keeps a
    // state the other does not.
    let decayed = Adam {
        weight_decay: 0.3,
        eps: 1e-2,
        betas: (0.8, 0.9),
        ..Adam::adamw()
    };
    let rest = Adam {
        weight_decay: 0.0,
        amsgrad: true,
        ..decayed.clone()
    };
    check_groups(decayed, rest);
}

#[test]
fn rmsprop_groups_match_twins() {
    let decayed = RmsProp {
        centered: true,
        momentum: 0.9,
        weight_decay: 0.3,
        eps: 1e-2,
        alpha: 0.9,
        ..RmsProp::default()
    };
    check_groups(
        decayed,
        RmsProp {
            eps: 1e-2,
            ..RmsProp::default()
        },
    );
}

#[test]
fn adagrad_groups_match_twins() {
    let decayed = Adagrad {
        weight_decay: 0.3,
        lr_decay: 0.1,
        initial_accumulator_value: 0.5,
        eps: 1e-2,
        ..Adagrad::default()
    };
    check_groups(
        decayed,
        Adagrad {
            initial_accumulator_value: 0.1,
            ..Adagrad::default()
        },
    );
}

#[test]
fn a_group_is_one_dispatch_per_window_however_many_tensors() {
    let gpu = common::gpu();
    let tensors: Vec<(String, usize)> = (0..500).map(|i| (format!("t{i}"), 1 + i % 97)).collect();
    let (even, odd): (Vec<_>, Vec<_>) = tensors
        .iter()
        .map(|(name, _)| name.clone())
        .partition(|name| name[1..].parse::<usize>().unwrap() % 2 == 0);
    let set = ParamSet::new(
        gpu,
        &tensors,
        vec![
            ParamGroup::new(Sgd::default(), even),
            ParamGroup::new(Sgd::default(), odd),
        ],
    )
    .unwrap();
    assert_eq!(set.dispatches_per_step(), 2);
}

#[test]
fn foreach_matches_twins_and_creates_nothing_after_the_first_step() {
    // A device of its own: the counters below are per device, and other tests create and
    // drop bind groups on the shared one in parallel.
    let own = GpuContext::new().unwrap();
    let gpu = &own;
    let lens = [1, 3, 1025, 4099];
    let rule = Adam {
        eps: 1e-2,
        weight_decay: 0.3,
        ..Adam::adamw()
    };
    let mut optimizer = ForeachOptimizer::new(gpu, rule.clone(), &lens).unwrap();
    let mut host = Vec::new();
    let mut buffers = Vec::new();
    for (index, &len) in lens.iter().enumerate() {
        let params = common::random_nonzero(len, 10 * index as u64);
        let grads = common::random_nonzero(len, 10 * index as u64 + 1);
        buffers.push((
            gpu.upload("params", &params).unwrap(),
            gpu.upload("grads", &grads).unwrap(),
        ));
        host.push((params, grads, CpuOptimizer::new(rule.clone(), len).unwrap()));
    }
    let pairs: Vec<(&wgpu::Buffer, &wgpu::Buffer)> = buffers.iter().map(|(p, g)| (p, g)).collect();
    optimizer.step(&pairs).unwrap();
    // Steps recorded into one encoder keep anything they create alive until the submit.
    let counters = || gpu.device().get_internal_counters().hal;
    let before = counters();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 1..STEPS {
        optimizer.record_step(&mut encoder, &pairs).unwrap();
    }
    let after = counters();
    assert_eq!(
        after.bind_groups.read(),
        before.bind_groups.read(),
        "a step created bind groups"
    );
    assert_eq!(
        after.compute_pipelines.read(),
        before.compute_pipelines.read(),
        "a step created pipelines"
    );
    gpu.queue().submit([encoder.finish()]);
    for ((params, grads, twin), (params_gpu, _)) in host.iter_mut().zip(&buffers) {
        for _ in 0..STEPS {
            twin.step(params, grads).unwrap();
        }
        let error = common::worst_relative_error(&gpu.download(params_gpu).unwrap(), params);
        assert!(error <= TOLERANCE, "foreach params off by {error:e}");
    }
    for (index, (_, _, twin)) in host.iter().enumerate() {
        for state in ["exp_avg", "exp_avg_sq"] {
            let error = common::worst_relative_error(
                &optimizer.read_state(state, index).unwrap(),
                &twin.read_state(state, 0).unwrap(),
            );
            assert!(
                error <= TOLERANCE,
                "foreach {state}[{index}] off by {error:e}"
            );
        }
    }
}

#[test]
fn state_bytes_is_what_was_allocated() {
    // A device of its own: the counters are per device, and other tests allocate in parallel.
    let own = GpuContext::new().unwrap();
    let gpu = &own;
    let counters = || {
        gpu.device()
            .get_internal_counters()
            .hal
            .buffer_memory
            .read()
    };
    let groups = vec![ParamGroup::new(
        Adam {
            amsgrad: true,
            ..Adam::default()
        },
        TENSORS.map(|(name, _)| name),
    )];
    let before = counters();
    let set = ParamSet::new(gpu, &TENSORS, groups).unwrap();
    let allocated = counters() - before;
    // Three state buffers over the group's run and, without immediates, the uniform of the
    // step's values.
    let state = 3 * set.layout().bytes();
    assert!(
        set.state_bytes() >= state && set.state_bytes() - state < 64 * 1024,
        "{}",
        set.state_bytes()
    );
    // wgpu's GL back end keeps no memory counter: there the driver's view cannot be compared.
    let counted = gpu.adapter_info().backend != wgpu::Backend::Gl;
    let driver_agrees = |allocated: isize, claimed: u64| {
        assert!(
            !counted || allocated as u64 == claimed,
            "the driver saw {allocated} bytes allocated, the optimizer claims {claimed}"
        );
    };
    driver_agrees(allocated, set.state_bytes());
    drop(set);

    let before = counters();
    let single = Optimizer::new(
        gpu,
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        },
        1025,
    )
    .unwrap();
    driver_agrees(counters() - before, single.state_bytes());
}

#[test]
fn registration_errors_are_typed() {
    let gpu = common::gpu();
    // Keeps a state buffer, so the largest-buffer check has something to refuse.
    let momentum = Sgd {
        momentum: 0.9,
        ..Sgd::default()
    };
    let build = |tensors: &[(&str, usize)], groups: &[&[&str]]| {
        let groups = groups
            .iter()
            .map(|names| ParamGroup::new(momentum.clone(), names.iter().copied()))
            .collect();
        ParamSet::new(gpu, tensors, groups)
            .err()
            .expect("registration should fail")
    };
    let error = build(&[("a", 4), ("a", 8)], &[&["a"]]);
    assert!(
        matches!(error, Error::DuplicateTensor { ref name } if name == "a"),
        "{error:?}"
    );
    let error = build(&[("a", 4), ("b", 0)], &[&["a", "b"]]);
    assert!(
        matches!(error, Error::EmptyTensor { ref name } if name == "b"),
        "{error:?}"
    );
    let error = build(&[("a", 4), ("b", 4)], &[&["a", "b"], &["b"]]);
    assert!(
        matches!(
            error,
            Error::TensorInTwoGroups {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{error:?}"
    );
    let error = build(&[("a", 4), ("b", 4)], &[&["a"]]);
    assert!(
        matches!(error, Error::UngroupedTensor { ref name } if name == "b"),
        "{error:?}"
    );
    let error = build(&[("a", 4)], &[&["a", "c"]]);
    assert!(
        matches!(error, Error::UnknownTensor { ref name } if name == "c"),
        "{error:?}"
    );
    // Past the adapter's largest buffer: refused before anything is allocated.
    let huge = (gpu.limits().max_buffer_size / 4) as usize;
    let error = build(&[("a", huge), ("b", 1)], &[&["a", "b"]]);
    assert!(matches!(error, Error::BufferTooLarge { .. }), "{error:?}");
    let error = ForeachOptimizer::new(gpu, Sgd::default(), &[4, 0])
        .err()
        .unwrap();
    assert!(matches!(error, Error::EmptyParams), "{error:?}");
}

#[test]
fn stepping_errors_are_typed_and_change_nothing() {
    let gpu = common::gpu();
    let groups = vec![ParamGroup::new(
        Adam::default(),
        TENSORS.map(|(name, _)| name),
    )];
    let mut set = ParamSet::new(gpu, &TENSORS, groups).unwrap();
    let len = set.layout().len() as usize;
    let values = common::random_nonzero(len, 1);
    let params = gpu.upload("params", &values).unwrap();
    let short_grads = gpu.upload("grads", &values[1..]).unwrap();
    let error = set.step(&params, &short_grads).unwrap_err();
    assert!(matches!(error, Error::LengthMismatch { .. }), "{error:?}");
    let short_params = gpu.upload("params", &values[1..]).unwrap();
    let error = set.step(&short_params, &short_grads).unwrap_err();
    assert!(matches!(error, Error::StateMismatch { .. }), "{error:?}");
    let error = set.set_group_lr(1, 0.1).unwrap_err();
    assert!(
        matches!(error, Error::UnknownGroup { group: 1 }),
        "{error:?}"
    );
    let error = set.read_state("exp_avg", "missing").unwrap_err();
    assert!(matches!(error, Error::UnknownTensor { .. }), "{error:?}");
    assert_eq!(set.step_count(), 0);
    assert_eq!(gpu.download(&params).unwrap(), values);

    let mut foreach = ForeachOptimizer::new(gpu, Adam::default(), &[4, 8]).unwrap();
    let [a, b, c] = [4, 8, 7].map(|len| gpu.upload("buffer", &values[..len]).unwrap());
    let a2 = gpu.upload("buffer", &values[..4]).unwrap();
    let error = foreach.step(&[(&a, &a2)]).unwrap_err();
    assert!(
        matches!(
            error,
            Error::PairCount {
                expected: 2,
                got: 1
            }
        ),
        "{error:?}"
    );
    let error = foreach.step(&[(&a, &a2), (&b, &c)]).unwrap_err();
    assert!(
        matches!(error, Error::LengthMismatch { ref tensor, .. } if tensor == "params[1]"),
        "{error:?}"
    );
    let error = foreach.step(&[(&a, &a2), (&a2, &b)]).unwrap_err();
    assert!(
        matches!(error, Error::AliasedBuffers { ref first, ref second } if first == "grads[0]" && second == "params[1]"),
        "{error:?}"
    );
    assert_eq!(foreach.step_count(), 0);
    assert_eq!(gpu.download(&a).unwrap(), values[..4]);
}

/// The groups the shard tests cut: bf16 params and grads, the decayed weights with the 8-bit
/// master correction, 8-bit `exp_avg` and 4-bit `exp_avg_sq`, the rest pure bf16 with
/// stochastic rounding and 8-bit state: every random stream a step draws from.
fn sharded_groups() -> Vec<ParamGroup<Adam>> {
    let names = |decay: bool| {
        TENSORS
            .iter()
            .filter(move |(name, _)| is_decayed(name) == decay)
            .map(|(name, _)| *name)
    };
    let precision = |text: &str| text.parse::<fused_optim::Precision>().unwrap();
    vec![
        ParamGroup::new(
            Adam {
                weight_decay: 0.01,
                ..Adam::default()
            },
            names(true),
        )
        .with_precision(precision("bf16,master=8bit,state=8bit,exp_avg_sq=4bit")),
        ParamGroup::new(Adam::default(), names(false))
            .with_precision(precision("bf16,rounding=stochastic,state=8bit")),
    ]
}

/// Shards of a set, each stepping the same packed buffers, update them bit for bit as the
/// whole set does, for 2 and 3 shards cutting tensors and groups mid-way; their state
/// together is the whole set's, plus at most a block and a word per buffer at each edge.
#[test]
fn shards_step_their_ranges_as_the_whole_set_does_bit_for_bit() {
    let gpu = common::gpu();
    let bf16 = fused_optim::Dtype::Bf16;
    for n in [2, 3] {
        let mut whole = ParamSet::new(gpu, &TENSORS, sharded_groups()).unwrap();
        let layout = whole.layout().clone();
        let len = layout.len() as usize;
        let shards = layout.shards(n).unwrap();
        assert_eq!(shards.len(), n);
        assert_eq!((shards[0].start, shards[n - 1].end), (0, layout.len()));
        let mut sets: Vec<ParamSet<Adam>> = shards
            .iter()
            .map(|range| ParamSet::shard(gpu, &TENSORS, sharded_groups(), range.clone()).unwrap())
            .collect();
        let initial = bf16.encode(&common::random_nonzero(len, 7));
        let whole_params = gpu.upload_bytes("params", &initial).unwrap();
        let shard_params = gpu.upload_bytes("params", &initial).unwrap();
        let grads = gpu
            .upload_bytes("grads", &bf16.encode(&vec![0.0; len]))
            .unwrap();
        for step in 0..STEPS {
            let values = common::random_nonzero(len, 70 + step as u64);
            gpu.queue().write_buffer(&grads, 0, &bf16.encode(&values));
            whole.step(&whole_params, &grads).unwrap();
            for set in &mut sets {
                set.step(&shard_params, &grads).unwrap();
            }
        }
        let want = gpu.download_bytes(&whole_params).unwrap();
        let got = gpu.download_bytes(&shard_params).unwrap();
        let differ = want.iter().zip(&got).filter(|(w, g)| w != g).count();
        assert_eq!(differ, 0, "{n} shards: bytes of the params differ");
        // A tensor wholly inside a shard has the whole set's state, bit for bit.
        for (name, _) in TENSORS {
            let slot = layout.tensor(name).unwrap();
            let holder = sets.iter().find(|set| {
                let range = set.range();
                slot.offset >= range.start && slot.offset + slot.len <= range.end
            });
            if let Some(set) = holder {
                for state in ["exp_avg", "exp_avg_sq"] {
                    let want = whole.read_state(state, name).unwrap();
                    let got = set.read_state(state, name).unwrap();
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(w, g)| w.to_bits() == g.to_bits()),
                        "{n} shards: {name} {state}"
                    );
                }
            }
        }
        let together: u64 = sets.iter().map(|set| set.state_bytes()).sum();
        // Per edge and group cut: master, two slots' codes and scales, each up to a block of
        // 32 elements (4 bytes each at most) and a word of rounding.
        let edges = 2 * (n as u64 - 1);
        assert!(
            together >= whole.state_bytes() && together <= whole.state_bytes() + edges * 5 * 132,
            "{n} shards: {together} bytes against {}",
            whole.state_bytes()
        );
    }
}

/// What a shard cannot do (a guarded step over its own grads alone, a read of a tensor it
/// holds part of), and ranges that are not shards, are typed errors.
#[test]
fn shard_errors_are_typed() {
    let gpu = common::gpu();
    let set = ParamSet::new(gpu, &TENSORS, sharded_groups()).unwrap();
    let layout = set.layout().clone();
    for range in [0..100, 100..layout.len(), 0..0, 0..layout.len() + 256] {
        let error = ParamSet::shard(gpu, &TENSORS, sharded_groups(), range.clone())
            .err()
            .unwrap();
        assert!(
            matches!(error, Error::InvalidShard { .. }),
            "{range:?}: {error}"
        );
    }
    assert!(matches!(layout.shards(0), Err(Error::InvalidShard { .. })));
    assert!(matches!(
        layout.shards(layout.len() as usize),
        Err(Error::InvalidShard { .. })
    ));
    let ranges = layout.shards(2).unwrap();
    let mut shard = ParamSet::shard(gpu, &TENSORS, sharded_groups(), ranges[0].clone()).unwrap();
    let refused = |result: fused_optim::Result<()>| {
        assert!(
            matches!(result, Err(Error::ShardUnsupported { .. })),
            "{result:?}"
        )
    };
    // embed.weight (2011 elements from 0) is cut by the edge of the first of 2 shards.
    let cut = layout
        .tensors()
        .iter()
        .find(|slot| slot.offset < ranges[0].end && slot.offset + slot.len > ranges[0].end)
        .expect("a tensor across the edge");
    assert!(matches!(
        shard.read_state("exp_avg", &cut.name),
        Err(Error::TensorOutsideShard { .. })
    ));
    // Under a guard, a shard steps only with every shard's partials.
    let bytes = fused_optim::Dtype::Bf16.encode(&vec![0.0; layout.len() as usize]);
    let params = gpu.upload_bytes("params", &bytes).unwrap();
    let grads = gpu.upload_bytes("grads", &bytes).unwrap();
    shard
        .set_grad_guard(fused_optim::GradGuard::default())
        .unwrap();
    refused(shard.step(&params, &grads));
}

/// Every shard's checkpoint merges into the one the whole set writes, tensors and metadata
/// bit for bit, in any order; shards of another count restore their parts of it (the split)
/// and step on as the whole set restored from it does. A shard's own checkpoint restores
/// nowhere but through a merge, and shards that do not cover the layout do not merge.
#[test]
fn shard_checkpoints_merge_into_the_whole_sets_and_split_for_any_count() {
    let gpu = common::gpu();
    let bf16 = fused_optim::Dtype::Bf16;
    let mut whole = ParamSet::new(gpu, &TENSORS, sharded_groups()).unwrap();
    let layout = whole.layout().clone();
    let len = layout.len() as usize;
    let shard_sets = |n: usize| -> Vec<ParamSet<Adam>> {
        layout
            .shards(n)
            .unwrap()
            .into_iter()
            .map(|range| ParamSet::shard(gpu, &TENSORS, sharded_groups(), range).unwrap())
            .collect()
    };
    let mut sets = shard_sets(2);
    let initial = bf16.encode(&common::random_nonzero(len, 9));
    let whole_params = gpu.upload_bytes("params", &initial).unwrap();
    let shard_params = gpu.upload_bytes("params", &initial).unwrap();
    let grads = gpu
        .upload_bytes("grads", &bf16.encode(&vec![0.0; len]))
        .unwrap();
    let step_all = |whole: &mut ParamSet<Adam>, sets: &mut Vec<ParamSet<Adam>>, seed: u64| {
        let values = common::random_nonzero(len, seed);
        gpu.queue().write_buffer(&grads, 0, &bf16.encode(&values));
        whole.step(&whole_params, &grads).unwrap();
        for set in sets.iter_mut() {
            set.step(&shard_params, &grads).unwrap();
        }
    };
    for step in 0..3 {
        step_all(&mut whole, &mut sets, 90 + step);
    }
    let parts: Vec<fused_optim::Checkpoint> = sets
        .iter()
        .rev()
        .map(|set| set.checkpoint().unwrap())
        .collect();
    let merged = fused_optim::Checkpoint::merge(&parts).unwrap();
    let want = whole.checkpoint().unwrap();
    assert_eq!(merged.metadata, want.metadata);
    assert_eq!(
        merged.tensors.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>()
    );
    for (name, tensor) in &want.tensors {
        let got = &merged.tensors[name];
        assert!(
            (got.dtype, &got.shape, &got.data) == (tensor.dtype, &tensor.shape, &tensor.data),
            "`{name}` differs"
        );
    }
    // The split: three shards restore their parts; all step on as the whole set does.
    let mut sets = shard_sets(3);
    for set in &mut sets {
        set.restore(&merged).unwrap();
    }
    let mut whole = ParamSet::new(gpu, &TENSORS, sharded_groups()).unwrap();
    whole.restore(&merged).unwrap();
    for step in 0..2 {
        step_all(&mut whole, &mut sets, 95 + step);
    }
    let (want, got) = (
        gpu.download_bytes(&whole_params).unwrap(),
        gpu.download_bytes(&shard_params).unwrap(),
    );
    assert!(want == got, "params after the split differ");
    let parts: Vec<fused_optim::Checkpoint> =
        sets.iter().map(|set| set.checkpoint().unwrap()).collect();
    let merged = fused_optim::Checkpoint::merge(&parts).unwrap();
    assert!(merged.tensors == whole.checkpoint().unwrap().tensors);
    let mismatch = |result: fused_optim::Result<()>| {
        assert!(
            matches!(result, Err(Error::CheckpointMismatch { .. })),
            "{result:?}"
        )
    };
    mismatch(sets[0].restore(&parts[0]));
    mismatch(fused_optim::Checkpoint::merge(&parts[1..]).map(drop));
}

/// `from_tensors` packs separate buffers (bf16 params and grads: 16-bit slots) into the
/// layout's slots, and the set steps them as one built by hand over the same packed data;
/// buffers it cannot copy or that disagree are typed errors.
#[test]
fn separate_buffers_are_packed_for_the_caller() {
    let gpu = common::gpu();
    let groups = || {
        vec![
            ParamGroup::new(Adam::adamw(), ["w", "v"])
                .with_precision("bf16,master=f32".parse().unwrap()),
            ParamGroup::new(Adam::default(), ["b"])
                .with_precision("bf16,master=f32".parse().unwrap()),
        ]
    };
    let sizes = [("w", 1026), ("b", 2), ("v", 34)];
    let data: Vec<(Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .enumerate()
        .map(|(k, &(_, len))| {
            let params = common::random_nonzero(len, 10 + k as u64);
            (params, common::random_nonzero(len, 20 + k as u64))
        })
        .collect();
    let bf16 = fused_optim::Dtype::Bf16;
    let buffers: Vec<(wgpu::Buffer, wgpu::Buffer)> = data
        .iter()
        .map(|(p, g)| {
            (
                gpu.upload_bytes("params", &bf16.encode(p)).unwrap(),
                gpu.upload_bytes("grads", &bf16.encode(g)).unwrap(),
            )
        })
        .collect();
    let tensors: Vec<(&str, &wgpu::Buffer, &wgpu::Buffer)> = sizes
        .iter()
        .zip(&buffers)
        .map(|(&(name, _), (p, g))| (name, p, g))
        .collect();
    let (mut set, packed) = ParamSet::from_tensors(gpu, &tensors, groups()).unwrap();
    // The same set built by hand, its packed buffers filled through the layout's ranges.
    let mut by_hand = ParamSet::new(gpu, &sizes, groups()).unwrap();
    let len = by_hand.layout().len() as usize;
    let (mut params, mut grads) = (vec![0.0; len], vec![0.0; len]);
    for ((name, _), (p, g)) in sizes.iter().zip(&data) {
        let range = by_hand.layout().tensor(name).unwrap().range();
        params[range.clone()].copy_from_slice(p);
        grads[range].copy_from_slice(g);
    }
    let hand_params = gpu.upload_bytes("params", &bf16.encode(&params)).unwrap();
    let hand_grads = gpu.upload_bytes("grads", &bf16.encode(&grads)).unwrap();
    assert_eq!(
        gpu.download_bytes(&packed.params).unwrap(),
        gpu.download_bytes(&hand_params).unwrap()
    );
    assert_eq!(
        gpu.download_bytes(&packed.grads).unwrap(),
        gpu.download_bytes(&hand_grads).unwrap()
    );
    for _ in 0..STEPS {
        set.step(&packed.params, &packed.grads).unwrap();
        by_hand.step(&hand_params, &hand_grads).unwrap();
    }
    assert_eq!(
        gpu.download_bytes(&packed.params).unwrap(),
        gpu.download_bytes(&hand_params).unwrap()
    );

    let short = gpu.upload("grads", &[0.5; 4]).unwrap();
    let mismatched = [("w", &buffers[0].0, &short)];
    let error = ParamSet::from_tensors(gpu, &mismatched, groups())
        .err()
        .unwrap();
    assert!(matches!(error, Error::LengthMismatch { .. }), "{error}");
    let uncopyable = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 8,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let error = ParamSet::from_tensors(gpu, &[("b", &uncopyable, &buffers[1].1)], groups())
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            Error::MissingUsage {
                usage: "COPY_SRC",
                ..
            }
        ),
        "{error}"
    );
}
