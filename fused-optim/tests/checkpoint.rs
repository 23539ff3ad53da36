//! Checkpoints: bit-exact resume through a safetensors file and a fresh device, crash-safe
//! saving, and defensive loading (typed errors, nothing half-restored).

mod common;

use std::io::Write;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    Adam, Checkpoint, Error, ForeachOptimizer, GpuContext, GradGuard, GradScaler, Optimizer,
    ParamGroup, ParamSet, Precision, Sgd, TensorDtype, UpdateRule,
};
use rand::{Rng, SeedableRng};

const LEN: usize = 1029;
const LEARNING_RATES: [f64; 6] = [0.1, 0.03, 0.2, 0.05, 0.12, 0.07];

/// A directory of this test's own, removed when dropped: no test sees another's files.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// What a run leaves: params' bytes, master and every state, bit patterns.
fn snapshot<R: UpdateRule>(
    gpu: &GpuContext,
    optimizer: &Optimizer<R>,
    params: &wgpu::Buffer,
) -> Vec<Vec<u32>> {
    let bits = |values: Vec<f32>| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut all = vec![bytemuck::pod_collect_to_vec(
        &gpu.download_bytes(params).unwrap(),
    )];
    all.extend(optimizer.read_master(params).unwrap().map(bits));
    for name in optimizer.state_names() {
        all.push(bits(optimizer.read_state(name, 0).unwrap()));
    }
    if let Some(status) = optimizer.read_grad_status().unwrap() {
        all.push(common::status_bits(&status));
    }
    all
}

/// Six steps uninterrupted against three, a save to a file, a fresh device and optimizer, a
/// load and three more: bit for bit the same params, master, state and status.
fn resume<R: UpdateRule>(rule: &R, precision: &Precision, guard: Option<GradGuard>) {
    let what = format!("{} [{precision}] guard {}", rule.name(), guard.is_some());
    let grads_of = |step: usize| {
        precision
            .grads
            .encode(&common::random_nonzero(LEN, 100 + step as u64))
    };
    let build = |gpu: &GpuContext, rule: R| {
        let optimizer = Optimizer::with_precision(gpu, rule, precision.clone(), LEN).unwrap();
        match guard {
            Some(guard) => optimizer.with_grad_guard(guard).unwrap(),
            None => optimizer,
        }
    };
    let run = |gpu: &GpuContext,
               optimizer: &mut Optimizer<R>,
               params: &wgpu::Buffer,
               steps: std::ops::Range<usize>| {
        let grads = gpu.upload_bytes("grads", &grads_of(0)).unwrap();
        for step in steps {
            gpu.queue().write_buffer(&grads, 0, &grads_of(step));
            optimizer.set_lr(LEARNING_RATES[step]).unwrap();
            optimizer.step(params, &grads).unwrap();
        }
    };
    let initial = precision.params.encode(&common::random_nonzero(LEN, 1));
    let gpu = common::gpu();
    let params = gpu.upload_bytes("params", &initial).unwrap();
    let mut whole = build(gpu, rule.clone());
    run(gpu, &mut whole, &params, 0..6);
    let want = snapshot(gpu, &whole, &params);

    let params = gpu.upload_bytes("params", &initial).unwrap();
    let mut first = build(gpu, rule.clone());
    run(gpu, &mut first, &params, 0..3);
    let dir = scratch();
    let path = dir.path().join("resume.safetensors");
    first.save(&path).unwrap();
    let saved_params = gpu.download_bytes(&params).unwrap();
    drop(first);

    let fresh = GpuContext::new().unwrap();
    let params = fresh.upload_bytes("params", &saved_params).unwrap();
    let mut second = build(&fresh, rule.clone());
    second.load(&path).unwrap();
    run(&fresh, &mut second, &params, 3..6);
    assert!(
        snapshot(&fresh, &second, &params) == want,
        "{what}: resumed run differs"
    );
}

#[test]
fn every_rule_resumes_bit_for_bit_through_a_file_and_a_fresh_device() {
    struct Resume;
    impl RuleVisitor for Resume {
        fn visit<R: RegisteredRule>(&mut self) {
            let configurations = R::every_flag();
            for rule in &configurations {
                resume(rule, &Precision::default(), None);
            }
            for (_, precision) in Precision::presets() {
                resume(&configurations[0], &precision, None);
            }
        }
    }
    visit_rules(&mut Resume);
    let guard = GradGuard::new().with_scaler(
        GradScaler::default()
            .with_init_scale(1024.0)
            .with_growth_interval(2),
    );
    for (_, precision) in Precision::presets() {
        resume(&Adam::adamw(), &precision, Some(guard));
    }
}

/// The tensors of the parameter-set tests: awkward lengths, two groups.
const TENSORS: [(&str, usize); 4] = [
    ("fc1.weight", 1025),
    ("fc1.bias", 3),
    ("fc2.weight", 300),
    ("fc2.bias", 1),
];

/// Packed values of every tensor (random, non-zero) with zero gaps, in `dtype`.
fn packed(set_layout: &fused_optim::ParamLayout, seed: u64, dtype: fused_optim::Dtype) -> Vec<u8> {
    let mut values = vec![0.0f32; set_layout.len() as usize];
    for (k, (name, len)) in TENSORS.iter().enumerate() {
        set_layout
            .view_mut(&mut values, name)
            .unwrap()
            .copy_from_slice(&common::random_nonzero(*len, seed * 10 + k as u64));
    }
    dtype.encode(&values)
}

/// A parameter set of `rules` (weights, then biases) in `precisions`: three steps, a save,
/// a fresh device with narrow binding windows, a load and three more equal six uninterrupted
/// bit for bit (params, and the whole checkpoint: every state, master, step, metadata).
fn resume_set<R: UpdateRule>(rules: [R; 2], precisions: [Precision; 2]) {
    let what = format!("{} [{}; {}]", rules[0].name(), precisions[0], precisions[1]);
    let build = |gpu: &GpuContext| {
        let groups = vec![
            ParamGroup::new(rules[0].clone(), ["fc1.weight", "fc2.weight"])
                .with_precision(precisions[0].clone()),
            ParamGroup::new(rules[1].clone(), ["fc1.bias", "fc2.bias"])
                .with_precision(precisions[1].clone()),
        ];
        ParamSet::new(gpu, &TENSORS, groups).unwrap()
    };
    let run = |gpu: &GpuContext, set: &mut ParamSet<R>, params: &wgpu::Buffer, steps| {
        let dtype = precisions[0].grads;
        let grads = gpu
            .upload_bytes("grads", &packed(set.layout(), 100, dtype))
            .unwrap();
        for step in steps {
            let values = packed(set.layout(), 100 + step as u64, dtype);
            gpu.queue().write_buffer(&grads, 0, &values);
            set.set_lr(LEARNING_RATES[step]).unwrap();
            set.step(params, &grads).unwrap();
        }
    };
    let gpu = common::gpu();
    let mut whole = build(gpu);
    let initial = packed(whole.layout(), 1, precisions[0].params);
    let params = gpu.upload_bytes("params", &initial).unwrap();
    run(gpu, &mut whole, &params, 0..6);
    let want = (
        gpu.download_bytes(&params).unwrap(),
        whole.checkpoint().unwrap(),
    );

    let params = gpu.upload_bytes("params", &initial).unwrap();
    let mut first = build(gpu);
    run(gpu, &mut first, &params, 0..3);
    let dir = scratch();
    let path = dir.path().join("set.safetensors");
    first.save(&path).unwrap();
    let saved = gpu.download_bytes(&params).unwrap();
    drop(first);

    let narrow = common::forced_windows();
    let params = narrow.upload_bytes("params", &saved).unwrap();
    let mut second = build(&narrow);
    second.load(&path).unwrap();
    run(&narrow, &mut second, &params, 3..6);
    let got = (
        narrow.download_bytes(&params).unwrap(),
        second.checkpoint().unwrap(),
    );
    assert!(got.0 == want.0, "{what}: params differ after resuming");
    assert!(got.1 == want.1, "{what}: state differs after resuming");
}

#[test]
fn every_rule_in_a_parameter_set_resumes_bit_for_bit_by_tensor_name() {
    struct Resume;
    impl RuleVisitor for Resume {
        fn visit<R: RegisteredRule>(&mut self) {
            let flags = R::every_flag();
            let rules = [flags[0].clone(), flags[flags.len() - 1].clone()];
            let lean = Precision::lean();
            let lean_f32_state: Precision = "bf16,master=remainder".parse().unwrap();
            resume_set(rules.clone(), [Precision::default(), Precision::default()]);
            resume_set(rules, [lean, lean_f32_state]);
        }
    }
    visit_rules(&mut Resume);
}

#[test]
fn a_parameter_set_names_its_tensors_and_refuses_other_tensors() {
    let gpu = common::gpu();
    let set = |tensors: &[(&str, usize)]| {
        let names: Vec<&str> = tensors.iter().map(|(name, _)| *name).collect();
        ParamSet::new(gpu, tensors, vec![ParamGroup::new(Adam::default(), names)]).unwrap()
    };
    let ours = set(&TENSORS);
    let checkpoint = ours.checkpoint().unwrap();
    for name in [
        "state.fc1.weight.exp_avg",
        "state.fc2.bias.exp_avg_sq",
        "state.fc1.bias.step",
    ] {
        assert!(checkpoint.tensors.contains_key(name), "{name} missing");
    }
    assert_eq!(checkpoint.tensors["state.fc2.weight.exp_avg"].shape, [300]);
    assert_eq!(
        checkpoint.metadata["fused_optim.param.fc2.weight"],
        "0:2:300"
    );
    let mut renamed = TENSORS;
    renamed[1].0 = "fc1.b";
    let mut longer = TENSORS;
    longer[3].1 = 2;
    // Tensors are matched by name: another order within the group restores.
    let mut reordered = TENSORS;
    reordered.reverse();
    set(&reordered).restore(&checkpoint).unwrap();
    for mut other in [set(&renamed), set(&longer), set(&TENSORS[..3])] {
        let error = other.restore(&checkpoint).unwrap_err();
        assert!(matches!(error, Error::CheckpointMismatch { .. }), "{error}");
    }
}

#[test]
fn a_checkpoint_recorded_into_an_encoder_is_taken_where_it_was_recorded() {
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let guard = GradGuard::new().with_scaler(GradScaler::default());
    let build = || {
        Optimizer::new(gpu, Adam::adamw(), LEN)
            .unwrap()
            .with_grad_guard(guard)
            .unwrap()
    };
    // Two steps, the checkpoint, two more steps: one encoder, one submission.
    let mut recorded = build();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 0..2 {
        recorded.record_step(&mut encoder, &params, &grads).unwrap();
    }
    let pending = recorded.record_checkpoint(&mut encoder).unwrap();
    let unsubmitted = recorded.record_checkpoint(&mut encoder).unwrap();
    for _ in 0..2 {
        recorded.record_step(&mut encoder, &params, &grads).unwrap();
    }
    assert!(!pending.is_ready());
    gpu.queue().submit([encoder.finish()]);
    let dir = scratch();
    let path = dir.path().join("recorded.safetensors");
    let saving = {
        let path = path.clone();
        std::thread::spawn(move || pending.save(path))
    };
    saving.join().unwrap().unwrap();

    let params = gpu
        .upload("params", &common::random_nonzero(LEN, 1))
        .unwrap();
    let mut stopped = build();
    for _ in 0..2 {
        stopped.step(&params, &grads).unwrap();
    }
    assert!(Checkpoint::load(&path).unwrap() == stopped.checkpoint().unwrap());
    // A blocking checkpoint keeps nothing; a recorded one keeps its copies for the next, and
    // only those.
    let plain = stopped.state_bytes();
    stopped.checkpoint().unwrap();
    assert_eq!(stopped.state_bytes(), plain);
    let record = |optimizer: &Optimizer<Adam>| {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        let pending = optimizer.record_checkpoint(&mut encoder).unwrap();
        gpu.queue().submit([encoder.finish()]);
        pending.wait().unwrap();
        optimizer.state_bytes()
    };
    let kept = record(&stopped);
    assert!(kept > plain);
    assert_eq!(record(&stopped), kept);

    // Copies recorded into an encoder that is never submitted never map: an error, no hang.
    let mut lost = gpu.device().create_command_encoder(&Default::default());
    let never = recorded.record_checkpoint(&mut lost).unwrap();
    drop(lost);
    assert!(matches!(never.wait(), Err(Error::Gpu { .. })));
    assert!(unsubmitted.wait().is_ok());
}

#[test]
fn eight_bit_state_expands_to_f32_and_restores_into_an_f32_state_optimizer() {
    let gpu = common::gpu();
    let lean = Precision::lean();
    let f32_state: Precision = "bf16,master=remainder".parse().unwrap();
    let params = gpu
        .upload_bytes("p", &lean.params.encode(&common::random_nonzero(LEN, 1)))
        .unwrap();
    let grads = gpu
        .upload_bytes("g", &lean.grads.encode(&common::random_nonzero(LEN, 2)))
        .unwrap();
    let mut compact = Optimizer::with_precision(gpu, Adam::default(), lean, LEN).unwrap();
    for _ in 0..3 {
        compact.step(&params, &grads).unwrap();
    }
    let checkpoint = compact.checkpoint().unwrap();
    assert_eq!(checkpoint.tensors["state.0.exp_avg"].dtype, TensorDtype::U8);
    assert_eq!(
        checkpoint.metadata["fused_optim.qmap.exp_avg_sq"],
        "unsigned"
    );
    let expanded = checkpoint.expanded().unwrap();
    assert!(expanded
        .tensors
        .keys()
        .all(|name| !name.ends_with(".absmax") && !name.contains("qmap")));
    assert_eq!(expanded.tensors["state.0.exp_avg"].dtype, TensorDtype::F32);
    let mut wide = Optimizer::with_precision(gpu, Adam::default(), f32_state, LEN).unwrap();
    wide.restore(&expanded).unwrap();
    for name in ["exp_avg", "exp_avg_sq", "step"] {
        let (want, got) = (
            compact.read_state(name, 0).unwrap(),
            wide.read_state(name, 0).unwrap(),
        );
        assert!(want == got, "{name} differs after expanding");
    }
    // Into the 8-bit optimizer it came from, the expanded one is refused: formats differ.
    let error = compact.restore(&expanded).unwrap_err();
    assert!(matches!(error, Error::CheckpointMismatch { .. }), "{error}");
}

/// The (params, grads) references a foreach step takes.
fn as_pairs(buffers: &[(wgpu::Buffer, wgpu::Buffer)]) -> Vec<(&wgpu::Buffer, &wgpu::Buffer)> {
    buffers.iter().map(|(p, g)| (p, g)).collect()
}

#[test]
fn a_foreach_optimizer_resumes_bit_for_bit() {
    let gpu = common::gpu();
    let lens = [5, 1025, 3];
    let upload = |k: usize, len: usize| {
        (
            gpu.upload("p", &common::random_nonzero(len, k as u64))
                .unwrap(),
            gpu.upload("g", &common::random_nonzero(len, 10 + k as u64))
                .unwrap(),
        )
    };
    let ours: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| upload(k, len))
        .collect();
    let theirs: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| upload(k, len))
        .collect();
    let (ours_pairs, theirs_pairs) = (as_pairs(&ours), as_pairs(&theirs));
    let mut first = ForeachOptimizer::new(gpu, Adam::default(), &lens).unwrap();
    first.step(&ours_pairs).unwrap();
    let bytes = first.checkpoint().unwrap().to_bytes().unwrap();
    let checkpoint = Checkpoint::from_bytes(&bytes).unwrap();
    assert!(checkpoint.tensors.contains_key("state.2.exp_avg_sq"));
    let mut second = ForeachOptimizer::new(gpu, Adam::default(), &lens).unwrap();
    second.restore(&checkpoint).unwrap();
    for ((ours, _), (theirs, _)) in ours_pairs.iter().zip(&theirs_pairs) {
        let bytes = gpu.download_bytes(ours).unwrap();
        gpu.queue().write_buffer(theirs, 0, &bytes);
    }
    first.step(&ours_pairs).unwrap();
    second.step(&theirs_pairs).unwrap();
    for (k, ((ours, _), (theirs, _))) in ours_pairs.iter().zip(&theirs_pairs).enumerate() {
        assert!(gpu.download_bytes(ours).unwrap() == gpu.download_bytes(theirs).unwrap());
        for name in ["exp_avg", "exp_avg_sq", "step"] {
            assert_eq!(
                first.read_state(name, k).unwrap(),
                second.read_state(name, k).unwrap()
            );
        }
    }
}

/// A writer that fails after `left` bytes, as a full disk does.
struct Failing {
    file: std::fs::File,
    left: usize,
}

impl Write for Failing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("injected: no space left on device"));
        }
        let n = bytes.len().min(self.left);
        self.left -= n;
        self.file.write(&bytes[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[test]
fn an_interrupted_save_leaves_the_old_checkpoint_intact() {
    let gpu = common::gpu();
    let params = gpu
        .upload("params", &common::random_nonzero(300, 1))
        .unwrap();
    let grads = gpu
        .upload("grads", &common::random_nonzero(300, 2))
        .unwrap();
    let mut adam = Optimizer::new(gpu, Adam::default(), 300).unwrap();
    adam.step(&params, &grads).unwrap();
    let dir = scratch();
    let path = dir.path().join("interrupted.safetensors");
    adam.save(&path).unwrap();
    let old = std::fs::read(&path).unwrap();
    adam.step(&params, &grads).unwrap();
    let newer = adam.checkpoint().unwrap();
    let size = newer.to_bytes().unwrap().len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..50 {
        let left = rng.random_range(0..size);
        let error = newer
            .save_through(&path, |file| Failing { file, left })
            .unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error}");
        assert!(
            std::fs::read(&path).unwrap() == old,
            "the old checkpoint changed"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    newer.save(&path).unwrap();
    assert!(Checkpoint::load(&path).unwrap() == newer);
}

/// Four threads each save twenty checkpoints of their own to one path at once: every save
/// installs one whole file (after each, the file loads as one of the checkpoints written, never
/// a torn or mixed one), and no temporary file is left behind.
#[test]
fn concurrent_saves_of_one_path_each_install_a_whole_checkpoint() {
    const THREADS: usize = 4;
    const SAVES: usize = 20;
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut adam = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    let mut written = Vec::new();
    for thread in 0..THREADS {
        adam.step(&params, &grads).unwrap();
        let base = adam.checkpoint().unwrap();
        written.push(
            (0..SAVES)
                .map(|save| {
                    let mut checkpoint = base.clone();
                    let label = format!("{thread}-{save}-{}", "x".repeat(save));
                    checkpoint.metadata.insert("test.save".into(), label);
                    checkpoint
                })
                .collect::<Vec<_>>(),
        );
    }
    let all: Vec<&Checkpoint> = written.iter().flatten().collect();
    let dir = scratch();
    let path = dir.path().join("shared.safetensors");
    std::thread::scope(|scope| {
        for checkpoints in &written {
            let (path, all) = (&path, &all);
            scope.spawn(move || {
                for checkpoint in checkpoints {
                    checkpoint.save(path).unwrap();
                    let loaded = Checkpoint::load(path).unwrap();
                    assert!(
                        all.contains(&&loaded),
                        "a save left a checkpoint never written"
                    );
                }
            });
        }
    });
    let last = Checkpoint::load(&path).unwrap();
    assert!(written.iter().any(|saves| saves.last() == Some(&last)));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["shared.safetensors"], "temporary files left");
}

/// Adam after one step submitted, its checkpoint then, and a second step recorded into the
/// encoder returned, not submitted; the params and grads.
fn a_step_taken_and_one_recorded(
    gpu: &GpuContext,
) -> (
    Optimizer<Adam>,
    Checkpoint,
    wgpu::CommandEncoder,
    wgpu::Buffer,
    wgpu::Buffer,
) {
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut adam = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    adam.step(&params, &grads).unwrap();
    let saved = adam.checkpoint().unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    adam.record_step(&mut encoder, &params, &grads).unwrap();
    (adam, saved, encoder, params, grads)
}

/// The checkpoint of Adam after two steps on the same params and grads, each submitted alone.
fn two_steps_submitted(gpu: &GpuContext) -> Checkpoint {
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut plain = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    plain.step(&params, &grads).unwrap();
    plain.step(&params, &grads).unwrap();
    plain.checkpoint().unwrap()
}

/// A step recorded into an encoder not yet submitted is counted, but its state is not on the
/// GPU: what would take or overwrite the state ahead of it (a checkpoint of its own
/// submission, copies recorded into another encoder, reading the step count, a step submitted
/// on its own, a restore) is refused, naming the step, with nothing changed. Copies recorded
/// into the step's own encoder follow it and are taken. Once submitted, all goes through, and
/// the checkpoint's step count is that of its state.
#[test]
fn nothing_runs_ahead_of_a_recorded_step_still_unsubmitted() {
    let gpu = common::gpu();
    let (mut adam, saved, mut encoder, params, grads) = a_step_taken_and_one_recorded(gpu);
    let unsubmitted = |error: Error| matches!(error, Error::UnsubmittedStep { step: 2, .. });
    assert!(unsubmitted(adam.checkpoint().unwrap_err()));
    let mut other = gpu.device().create_command_encoder(&Default::default());
    assert!(unsubmitted(
        adam.record_checkpoint(&mut other).err().unwrap()
    ));
    assert!(unsubmitted(adam.read_state("step", 0).unwrap_err()));
    assert!(unsubmitted(adam.read_state("exp_avg", 0).unwrap_err()));
    assert!(unsubmitted(adam.step(&params, &grads).unwrap_err()));
    assert!(unsubmitted(adam.restore(&saved).unwrap_err()));
    assert_eq!(adam.step_count(), 2);
    let within = adam.record_checkpoint(&mut encoder).unwrap();
    gpu.queue().submit([encoder.finish(), other.finish()]);
    let after = adam.checkpoint().unwrap();
    assert!(within.wait().unwrap() == after);
    assert_eq!(after.meta("fused_optim.steps").unwrap(), "2");
    assert_eq!(adam.read_state("step", 0).unwrap(), [2.0]);

    assert!(two_steps_submitted(gpu) == after);
}

/// A checkpoint's copies recorded into an encoder not yet submitted copy the state when that
/// encoder runs: what writes the state in a submission of its own (a step, a restore) is
/// refused until then, so the copies hold the state of the step count they were recorded
/// with. Reads and other checkpoints go on.
#[test]
fn nothing_overwrites_the_state_ahead_of_a_recorded_checkpoint() {
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut adam = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    adam.step(&params, &grads).unwrap();
    let saved = adam.checkpoint().unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let pending = adam.record_checkpoint(&mut encoder).unwrap();
    let unsubmitted =
        |error: Error| matches!(error, Error::UnsubmittedCheckpoint { after_step: 1, .. });
    assert!(unsubmitted(adam.step(&params, &grads).unwrap_err()));
    assert!(unsubmitted(adam.restore(&saved).unwrap_err()));
    assert!(adam.checkpoint().unwrap() == saved);
    assert_eq!(adam.read_state("step", 0).unwrap(), [1.0]);
    gpu.queue().submit([encoder.finish()]);
    adam.step(&params, &grads).unwrap();
    assert!(pending.wait().unwrap() == saved);
}

/// The markers that say a recorded step was submitted resolve at the first poll after the
/// submit, while the GPU still runs the step: a checkpoint right after submitting a long step
/// (Adam over 8M parameters) is taken, not refused, and holds that step.
#[test]
fn a_submitted_step_still_running_is_seen_submitted() {
    const LARGE: usize = 8 << 20;
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LARGE);
    let mut adam = Optimizer::new(gpu, Adam::default(), LARGE).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    adam.record_step(&mut encoder, &params, &grads).unwrap();
    gpu.queue().submit([encoder.finish()]);
    let checkpoint = adam.checkpoint().unwrap();
    assert_eq!(checkpoint.meta("fused_optim.applied").unwrap(), "1");
    assert!(checkpoint.tensors["state.0.exp_avg"]
        .data
        .iter()
        .any(|&b| b != 0));
}

/// A restore does not wait for the GPU: the grad-status readbacks of steps submitted before
/// it land after it, and are ignored then, since they tell of steps the restored state never
/// took. Five guarded steps still in flight, a restore of the state after none: once the GPU
/// is done, the host knows no status and the scale is the restored one, as after a restore
/// with nothing in flight; the next step is the restored run's first.
#[test]
fn readbacks_of_steps_before_a_restore_are_ignored_when_they_land() {
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let guard = GradGuard::new().with_scaler(GradScaler::default().with_init_scale(64.0));
    let mut adam = Optimizer::new(gpu, Adam::default(), LEN)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    let fresh = adam.checkpoint().unwrap();
    for _ in 0..5 {
        adam.step(&params, &grads).unwrap();
    }
    adam.restore(&fresh).unwrap();
    gpu.wait().unwrap();
    assert_eq!(adam.grad_status(), None);
    assert_eq!(adam.loss_scale(), Some(64.0));
    adam.step(&params, &grads).unwrap();
    gpu.wait().unwrap();
    let (step, status) = adam.grad_status().unwrap();
    assert_eq!((step, status.applied), (1, 1));
}

/// A step recorded into an encoder dropped without being submitted never ran, yet was
/// counted: later steps and checkpoints are refused (their step counts would be one ahead of
/// the state) until a restore replaces the state, after which the run goes on as one that
/// never recorded it.
#[test]
fn a_step_dropped_unsubmitted_is_refused_until_a_restore() {
    let gpu = common::gpu();
    let (mut adam, saved, encoder, params, grads) = a_step_taken_and_one_recorded(gpu);
    drop(encoder);
    let dropped = |error: Error| matches!(error, Error::DroppedStep { step: 2 });
    assert!(dropped(adam.checkpoint().unwrap_err()));
    assert!(dropped(adam.step(&params, &grads).unwrap_err()));
    let mut next = gpu.device().create_command_encoder(&Default::default());
    assert!(dropped(
        adam.record_step(&mut next, &params, &grads).unwrap_err()
    ));
    common::assert_encoder_still_clean(gpu, next);
    adam.restore(&saved).unwrap();
    adam.step(&params, &grads).unwrap();
    assert!(two_steps_submitted(gpu) == adam.checkpoint().unwrap());
}

/// One finite grad of 1e20 overflows `exp_avg_sq` to inf while every param stays finite, as
/// in PyTorch: `save` writes that state, `load` takes it back, and the resumed run continues
/// the uninterrupted one bit for bit.
#[test]
fn state_overflowed_to_inf_saves_loads_and_resumes() {
    let gpu = common::gpu();
    let mut values = common::random_nonzero(LEN, 2);
    values[7] = 1e20;
    let grads = gpu.upload("grads", &values).unwrap();
    let initial = common::random_nonzero(LEN, 1);
    let run = |adam: &mut Optimizer<Adam>, params: &wgpu::Buffer, steps: usize| {
        for _ in 0..steps {
            adam.step(params, &grads).unwrap();
        }
    };
    let params = gpu.upload("params", &initial).unwrap();
    let mut whole = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    run(&mut whole, &params, 4);
    let want = snapshot(gpu, &whole, &params);

    let params = gpu.upload("params", &initial).unwrap();
    let mut first = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    run(&mut first, &params, 2);
    assert_eq!(first.read_state("exp_avg_sq", 0).unwrap()[7], f32::INFINITY);
    assert!(gpu.download(&params).unwrap().iter().all(|p| p.is_finite()));
    let dir = scratch();
    let path = dir.path().join("overflowed.safetensors");
    first.save(&path).unwrap();
    let mut second = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    second.load(&path).unwrap();
    run(&mut second, &params, 2);
    assert!(snapshot(gpu, &second, &params) == want);
}

/// SGD keeps no `step` state (neither does PyTorch's), so its step count travels in the
/// checkpoint's metadata (`fused_optim.steps`, which `to-fused --step N` writes): a run
/// resumed there continues a schedule keyed on `step_count()` where it was, bit for bit.
#[test]
fn sgd_resumed_mid_schedule_continues_its_schedule() {
    let gpu = common::gpu();
    let schedule = fused_optim::LrSchedule::Cosine {
        t_max: 6,
        eta_min: 0.001,
    };
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    let grads = gpu
        .upload("grads", &common::random_nonzero(LEN, 2))
        .unwrap();
    let run = |optimizer: &mut Optimizer<Sgd>, params: &wgpu::Buffer, steps: usize| {
        for _ in 0..steps {
            let lr = schedule.lr(0.1, optimizer.step_count());
            optimizer.set_lr(lr).unwrap();
            optimizer.step(params, &grads).unwrap();
        }
    };
    let initial = common::random_nonzero(LEN, 1);
    let params = gpu.upload("params", &initial).unwrap();
    let mut whole = Optimizer::new(gpu, sgd.clone(), LEN).unwrap();
    run(&mut whole, &params, 6);
    let want = gpu.download_bytes(&params).unwrap();

    let params = gpu.upload("params", &initial).unwrap();
    let mut first = Optimizer::new(gpu, sgd.clone(), LEN).unwrap();
    run(&mut first, &params, 3);
    let checkpoint = first.checkpoint().unwrap();
    assert_eq!(checkpoint.meta("fused_optim.steps").unwrap(), "3");
    assert!(!checkpoint
        .tensors
        .keys()
        .any(|name| name.ends_with(".step")));
    let mut second = Optimizer::new(gpu, sgd.clone(), LEN).unwrap();
    second.restore(&checkpoint).unwrap();
    assert_eq!(second.step_count(), 3);
    run(&mut second, &params, 3);
    assert!(gpu.download_bytes(&params).unwrap() == want);
}

/// Asserts `restore` fails with an error `matches` accepts and leaves `adam` as it was.
fn refused(adam: &mut Optimizer<Adam>, checkpoint: &Checkpoint, matches: fn(&Error) -> bool) {
    let before = (
        adam.read_state("exp_avg", 0).unwrap(),
        adam.step_count(),
        adam.lr(),
    );
    let error = adam.restore(checkpoint).unwrap_err();
    assert!(matches(&error), "unexpected {error}");
    let after = (
        adam.read_state("exp_avg", 0).unwrap(),
        adam.step_count(),
        adam.lr(),
    );
    assert!(
        after == before,
        "a refused checkpoint changed the optimizer ({error})"
    );
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_with_nothing_restored() {
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut source = Optimizer::new(
        gpu,
        Adam {
            lr: 0.01,
            ..Adam::default()
        },
        LEN,
    )
    .unwrap();
    source.step(&params, &grads).unwrap();
    let good = source.checkpoint().unwrap();
    let mut adam = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    let mismatch = |e: &Error| matches!(e, Error::CheckpointMismatch { .. });
    let corrupt = |e: &Error| matches!(e, Error::CorruptCheckpoint { .. });

    let mut sgd = Optimizer::new(gpu, Sgd::default(), LEN).unwrap();
    sgd.step(&params, &grads).unwrap();
    refused(&mut adam, &sgd.checkpoint().unwrap(), mismatch);
    let shorter = Optimizer::new(gpu, Adam::default(), LEN - 1).unwrap();
    refused(&mut adam, &shorter.checkpoint().unwrap(), mismatch);
    let lean = Optimizer::with_precision(gpu, Adam::default(), Precision::lean(), LEN).unwrap();
    refused(&mut adam, &lean.checkpoint().unwrap(), mismatch);
    let amsgrad = Optimizer::new(
        gpu,
        Adam {
            amsgrad: true,
            ..Adam::default()
        },
        LEN,
    )
    .unwrap();
    refused(&mut adam, &amsgrad.checkpoint().unwrap(), |e| {
        matches!(
            e,
            Error::CheckpointMismatch { .. } | Error::CorruptCheckpoint { .. }
        )
    });
    let guarded = Optimizer::new(gpu, Adam::default(), LEN)
        .unwrap()
        .with_grad_guard(GradGuard::default())
        .unwrap();
    refused(&mut adam, &guarded.checkpoint().unwrap(), mismatch);
    // A scaled run's status must not resume under a guard that does not scale.
    let mut clipping = Optimizer::new(gpu, Adam::default(), LEN)
        .unwrap()
        .with_grad_guard(GradGuard::new().with_clip_value(1.0))
        .unwrap();
    let scaling_adam = || {
        let scaling = GradGuard::new().with_scaler(GradScaler::default());
        let adam = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
        adam.with_grad_guard(scaling).unwrap()
    };
    let scaled = scaling_adam();
    let scaled_checkpoint = scaled.checkpoint().unwrap();
    refused(&mut clipping, &scaled_checkpoint, mismatch);
    // The scaler's state is in the metadata too, under GradScaler's state_dict names, and
    // must agree with the status.
    assert_eq!(scaled_checkpoint.metadata["grad_scaler.scale"], "65536.0");
    assert_eq!(
        scaled_checkpoint.metadata["grad_scaler._growth_tracker"],
        "0"
    );
    let mut rescaled = scaled_checkpoint.clone();
    rescaled
        .metadata
        .insert("grad_scaler.scale".into(), "2.0".into());
    let mut scaling = scaling_adam();
    refused(&mut scaling, &rescaled, corrupt);
    scaling.restore(&scaled_checkpoint).unwrap();
    clipping.restore(&guarded.checkpoint().unwrap()).unwrap();

    let edit = |change: &dyn Fn(&mut Checkpoint)| {
        let mut checkpoint = good.clone();
        change(&mut checkpoint);
        checkpoint
    };
    refused(
        &mut adam,
        &edit(&|c| {
            c.tensors.remove("state.0.exp_avg");
        }),
        corrupt,
    );
    refused(
        &mut adam,
        &edit(&|c| {
            let extra = c.tensors["state.0.exp_avg"].clone();
            c.tensors.insert("state.0.momentum_buffer".into(), extra);
        }),
        mismatch,
    );
    refused(
        &mut adam,
        &edit(&|c| {
            c.tensors.get_mut("state.0.exp_avg_sq").unwrap().data[4..8]
                .copy_from_slice(&(-1.0f32).to_le_bytes());
        }),
        corrupt,
    );
    refused(
        &mut adam,
        &edit(&|c| {
            let tensor = c.tensors.get_mut("state.0.exp_avg_sq").unwrap();
            tensor.data.truncate(tensor.data.len() - 4);
            tensor.shape = vec![LEN - 1];
        }),
        corrupt,
    );
    refused(
        &mut adam,
        &edit(&|c| {
            c.metadata.insert("param_groups.0.lr".into(), "true".into());
        }),
        corrupt,
    );
    refused(
        &mut adam,
        &edit(&|c| {
            c.metadata.insert("param_groups.0.lr".into(), "-1.0".into());
        }),
        |e| matches!(e, Error::InvalidConfig { .. }),
    );
    refused(
        &mut adam,
        &edit(&|c| {
            c.metadata
                .insert(fused_optim::checkpoint::VERSION_KEY.into(), "99".into());
        }),
        corrupt,
    );
    let bytes = good.to_bytes().unwrap();
    assert!(matches!(
        Checkpoint::from_bytes(&bytes[..bytes.len() - 3]).unwrap_err(),
        Error::CorruptCheckpoint { .. }
    ));
    // The good one restores, hyperparameters included.
    adam.restore(&good).unwrap();
    assert_eq!((adam.lr(), adam.step_count()), (0.01, 1));
}

/// Thousands of random mutations of a valid file (bytes flipped, truncations, the header's
/// JSON edited): never a panic, and a refused one leaves the optimizer as it was.
#[test]
fn mutated_checkpoints_never_panic_nor_half_restore() {
    let gpu = common::gpu();
    let len = 7;
    let precision: Precision = "bf16,master=remainder,state=8bit".parse().unwrap();
    let mut source =
        Optimizer::with_precision(gpu, Adam::default(), precision.clone(), len).unwrap();
    let params16 = gpu
        .upload_bytes(
            "params",
            &precision.params.encode(&common::random_nonzero(len, 1)),
        )
        .unwrap();
    let grads16 = gpu
        .upload_bytes(
            "grads",
            &precision.grads.encode(&common::random_nonzero(len, 2)),
        )
        .unwrap();
    source.step(&params16, &grads16).unwrap();
    let good = source.checkpoint().unwrap().to_bytes().unwrap();
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut target = Optimizer::with_precision(gpu, Adam::default(), precision, len).unwrap();
    let before = target.checkpoint().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = good.clone();
        match rng.random_range(0..3) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {
                let alphabet = b"{}[]\":,0123456789.-eE truefalsnul";
                let at = rng.random_range(8..header_end);
                bytes[at] = alphabet[rng.random_range(0..alphabet.len())];
            }
        }
        match Checkpoint::from_bytes(&bytes).and_then(|c| target.restore(&c)) {
            Ok(()) => {
                accepted += 1;
                target.restore(&before).unwrap();
            }
            Err(_) => {
                refused += 1;
                if refused % 50 == 0 {
                    assert!(
                        target.checkpoint().unwrap() == before,
                        "a refused checkpoint changed state"
                    );
                }
            }
        }
    }
    assert!(target.checkpoint().unwrap() == before);
    println!("{refused} refused, {accepted} accepted (changes that kept a valid checkpoint)");
    assert!(refused > 1500);
}
