//! The grad guard (loss scaling, inf/NaN skipping, clipping) on the GPU against its CPU twin,
//! bit for bit, and against GradScaler and clip_grad_norm_ worked by hand.
//!
//! Bit for bit: the reduction's partial sums, their combine and the scaler are the same f32
//! operations in the same order on the GPU and in `CpuGuard`, and on lavapipe and llvmpipe f32
//! arithmetic is exact IEEE (tests/formats.rs says the same of the rules).

mod common;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    Adam, ClipGradNorm, CpuGuard, CpuOptimizer, Dtype, Error, ForeachOptimizer, GpuContext,
    GradGuard, GradPartial, GradScaler, NormType, Optimizer, ParamGroup, ParamSet, Precision, Sgd,
    UpdateRule,
};

fn scaler(init_scale: f32, growth_interval: u32) -> GradScaler {
    GradScaler::default()
        .with_init_scale(init_scale)
        .with_growth_interval(growth_interval)
}

/// The guards every rule is checked under: a scaler that grows and backs off with both
/// clippings, and clipping by inf-norm alone (no skipping: the NaN step runs, as PyTorch's
/// clip_grad_norm_ lets it).
fn guards() -> Vec<GradGuard> {
    vec![
        GradGuard::new()
            .with_scaler(scaler(1024.0, 2))
            .with_clip_value(0.9)
            .with_clip_norm(ClipGradNorm::new(4.0)),
        GradGuard::new().with_clip_norm(ClipGradNorm::new(0.5).with_norm_type(NormType::Inf)),
    ]
}

/// The CPU twins of a guarded optimizer: its rule's, its guard's, and the params they update.
struct Twins<'a, R: UpdateRule> {
    gpu: &'a GpuContext,
    cpu: &'a mut CpuOptimizer<R>,
    guard: &'a mut CpuGuard,
    params: &'a mut Vec<u8>,
}

impl<R: UpdateRule> Twins<'_, R> {
    /// One step from grads `values` (in `precision`'s grads format), on the GPU and the twins;
    /// the statuses after it compare bit for bit (`what` names the case).
    fn step_with(
        &mut self,
        optimizer: &mut Optimizer<R>,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        values: &[f32],
        precision: &Precision,
        what: &str,
    ) {
        let grads_cpu = precision.grads.encode(values);
        self.gpu.queue().write_buffer(grads, 0, &grads_cpu);
        let decoded = precision.grads.decode(&grads_cpu, values.len());
        let grad_step = self.guard.check(&[&decoded]);
        self.cpu
            .step_guarded(self.params, &grads_cpu, &grad_step)
            .unwrap();
        optimizer.step(params, grads).unwrap();
        let status = optimizer.read_grad_status().unwrap().unwrap();
        let twin = self.guard.status();
        assert_eq!(
            common::status_bits(&status),
            common::status_bits(&twin),
            "{what}: status after step {}: {status:?} against {twin:?}",
            optimizer.step_count()
        );
    }
}

/// Six steps of `rule` in `precision` under `guard` on the GPU and the twin: grads scaled by
/// the scale the twin holds (as a backward pass of a scaled loss makes them), an inf at step 3
/// and a NaN at step 5 in the last element. Compares params, master, every state and the
/// status, bit for bit.
fn check<R: UpdateRule>(
    gpu: &GpuContext,
    rule: &R,
    precision: &Precision,
    guard: GradGuard,
    len: usize,
) {
    let what = format!("{} [{precision}] {guard:?} len {len}", rule.name());
    let seed = len as u64 + 7;
    let common::SideBySide {
        mut params_cpu,
        params,
        grads,
        mut cpu,
        optimizer,
        ..
    } = common::SideBySide::new(gpu, rule, precision, len, seed);
    let mut twin = CpuGuard::new(guard).unwrap();
    let mut optimizer = optimizer.with_grad_guard(guard).unwrap();
    for step in 1..=6u64 {
        let values = common::guarded_grads(&guard, len, seed, step, twin.status().scale);
        let mut twins = Twins {
            gpu,
            cpu: &mut cpu,
            guard: &mut twin,
            params: &mut params_cpu,
        };
        twins.step_with(&mut optimizer, &params, &grads, &values, precision, &what);
    }
    let got = gpu.download_bytes(&params).unwrap();
    assert!(got == params_cpu, "{what}: params differ");
    let master = optimizer.read_master(&params).unwrap();
    assert_eq!(
        master.as_deref().map(common::bits),
        cpu.master(&params_cpu).as_deref().map(common::bits),
        "{what}: master weights differ"
    );
    for name in optimizer.state_names() {
        let (got, want) = (
            optimizer.read_state(name, 0).unwrap(),
            cpu.read_state(name, 0).unwrap(),
        );
        let differ = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits());
        assert_eq!(differ.count(), 0, "{what}: elements of state {name} differ");
    }
}

/// Every rule in every flag combination, in f32 and the leanest format, under both guards, at
/// sizes that end mid-chunk, mid-block and mid-pair, with forced windows.
#[test]
fn every_rule_scaled_clipped_and_skipped_matches_its_twin_bit_for_bit() {
    struct Guarded<'scope, 'env> {
        scope: &'scope std::thread::Scope<'scope, 'env>,
    }
    impl RuleVisitor for Guarded<'_, '_> {
        fn visit<R: RegisteredRule>(&mut self) {
            self.scope.spawn(|| {
                let (gpu, forced) = (common::gpu().clone(), common::forced_windows());
                for (index, rule) in R::every_flag().iter().enumerate() {
                    for guard in guards() {
                        check(&gpu, rule, &Precision::default(), guard, 1025);
                        if index == 0 {
                            check(&gpu, rule, &Precision::default(), guard, 3);
                            check(&forced, rule, &Precision::lean(), guard, 2051);
                            check(&gpu, rule, &Precision::lean(), guard, 1);
                        }
                    }
                }
            });
        }
    }
    std::thread::scope(|scope| visit_rules(&mut Guarded { scope }));
}

/// Adam in every precision preset under the scaler with both clippings, with forced windows.
#[test]
fn every_format_scaled_clipped_and_skipped_matches_its_twin_bit_for_bit() {
    let forced = common::forced_windows();
    for (_, precision) in Precision::presets() {
        check(&forced, &Adam::default(), &precision, guards()[0], 2051);
    }
}

/// An inf (then a NaN) in the last element of the last of 148 tensors skips the whole step:
/// every param and state of every tensor bitwise unchanged, the step count where it was.
#[test]
fn an_inf_in_the_last_tensor_skips_the_step_for_every_tensor() {
    let gpu = common::gpu();
    let lens: Vec<usize> = (0..148).map(|k| 1 + (k * 37) % 300).collect();
    let guard = GradGuard::new().with_scaler(GradScaler::default());
    let mut foreach = ForeachOptimizer::new(gpu, Adam::default(), &lens)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    let buffers: Vec<(wgpu::Buffer, wgpu::Buffer)> = lens
        .iter()
        .enumerate()
        .map(|(k, &len)| {
            let params = gpu
                .upload("p", &common::random_nonzero(len, k as u64))
                .unwrap();
            let grads = gpu
                .upload("g", &common::random_nonzero(len, 500 + k as u64))
                .unwrap();
            (params, grads)
        })
        .collect();
    let pairs: Vec<(&wgpu::Buffer, &wgpu::Buffer)> = buffers.iter().map(|(p, g)| (p, g)).collect();
    foreach.step(&pairs).unwrap();
    let snapshot = |foreach: &ForeachOptimizer<Adam>| {
        let mut all = Vec::new();
        for (k, (params, _)) in buffers.iter().enumerate() {
            all.push(gpu.download_bytes(params).unwrap());
            for name in ["exp_avg", "exp_avg_sq"] {
                all.push(bytemuck::cast_slice(&foreach.read_state(name, k).unwrap()).to_vec());
            }
        }
        all
    };
    let before = snapshot(&foreach);
    let last = &buffers[147].1;
    let last_len = lens[147] as u64;
    for (poison, skipped) in [(f32::INFINITY, 1), (f32::NAN, 2)] {
        gpu.queue()
            .write_buffer(last, (last_len - 1) * 4, bytemuck::bytes_of(&poison));
        foreach.step(&pairs).unwrap();
        assert!(snapshot(&foreach) == before, "{poison} changed something");
        let status = foreach.read_grad_status().unwrap().unwrap();
        assert_eq!(
            (status.applied, status.skipped, status.found_inf),
            (1, skipped, true)
        );
        assert_eq!(foreach.read_state("step", 0).unwrap(), vec![1.0]);
    }
    assert_eq!(foreach.step_count(), 3);
}

/// The same skip in a parameter set of 148 tensors in two groups, bf16 with remainder master.
#[test]
fn an_inf_in_a_parameter_set_skips_every_group() {
    let gpu = common::gpu();
    let tensors: Vec<(String, usize)> = (0..148)
        .map(|k| (format!("t{k}"), 1 + (k * 53) % 700))
        .collect();
    let names = |odd: usize| -> Vec<String> {
        tensors
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == odd)
            .map(|(_, (name, _))| name.clone())
            .collect()
    };
    let precision: Precision = "bf16,master=remainder,state=8bit".parse().unwrap();
    let groups = vec![
        ParamGroup::new(Adam::default(), names(0)).with_precision(precision.clone()),
        ParamGroup::new(
            Adam {
                lr: 0.01,
                ..Adam::default()
            },
            names(1),
        )
        .with_precision(precision),
    ];
    let mut set = ParamSet::new(gpu, &tensors, groups)
        .unwrap()
        .with_grad_guard(GradGuard::new().with_scaler(GradScaler::default()))
        .unwrap();
    let len = set.layout().len() as usize;
    let params = gpu
        .upload_bytes(
            "params",
            &Dtype::Bf16.encode(&common::random_nonzero(len, 1)),
        )
        .unwrap();
    let mut grads_host = common::random_nonzero(len, 2);
    let grads = gpu
        .upload_bytes("grads", &Dtype::Bf16.encode(&grads_host))
        .unwrap();
    set.step(&params, &grads).unwrap();
    let before = gpu.download_bytes(&params).unwrap();
    let last = set.layout().tensors().last().unwrap().range().end - 1;
    grads_host[last] = f32::INFINITY;
    gpu.queue()
        .write_buffer(&grads, 0, &Dtype::Bf16.encode(&grads_host));
    set.step(&params, &grads).unwrap();
    assert!(gpu.download_bytes(&params).unwrap() == before);
    let status = set.read_grad_status().unwrap().unwrap();
    assert_eq!((status.applied, status.skipped), (1, 1));
}

/// `loss_scale` follows the scaler without a wait of its own: the initial scale before any
/// step, the device's once a step's status is back, the written one after a switch, and the
/// restored one after a restore.
#[test]
fn the_loss_scale_is_readable_without_waiting() {
    let gpu = common::gpu();
    let guard = |enabled| GradGuard::new().with_scaler(scaler(1024.0, 1).with_enabled(enabled));
    let (params, grads) = common::params_and_grads(gpu, 33);
    let mut adam = Optimizer::new(gpu, Adam::default(), 33).unwrap();
    assert_eq!(adam.loss_scale(), None);
    adam.set_grad_guard(guard(true)).unwrap();
    assert_eq!(adam.loss_scale(), Some(1024.0));
    adam.step(&params, &grads).unwrap();
    let status = adam.read_grad_status().unwrap().unwrap();
    assert_eq!(
        (status.scale, status.found_inf, status.skip),
        (2048.0, false, false)
    );
    assert_eq!(adam.loss_scale(), Some(2048.0));
    let checkpoint = adam.checkpoint().unwrap();
    adam.set_grad_guard(guard(false)).unwrap();
    assert_eq!(adam.loss_scale(), Some(1.0));
    adam.set_grad_guard(guard(true)).unwrap();
    adam.restore(&checkpoint).unwrap();
    assert_eq!(adam.loss_scale(), Some(2048.0));
}

/// GradScaler as torch/amp/grad_scaler.py and `_amp_update_scale_` define it (an f32 scale
/// that grows only while the grown value is finite): the host model the device is held to.
struct ScalerModel {
    scale: f32,
    tracker: u32,
}

impl ScalerModel {
    fn update(&mut self, found_inf: bool, scaler: &GradScaler) {
        if found_inf {
            self.scale *= scaler.backoff_factor;
            self.tracker = 0;
        } else if self.tracker + 1 == scaler.growth_interval {
            let grown = self.scale * scaler.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.tracker = 0;
        } else {
            self.tracker += 1;
        }
    }
}

/// 5,000 steps, 100 recorded per encoder, with an inf in the grads at chosen steps (copied
/// into the grads in the encoder's order): scale, tracker and counts match the model at the
/// end of every encoder.
#[test]
fn scale_growth_and_backoff_over_5000_steps_match_gradscaler() {
    let gpu = common::gpu();
    let scaler = GradScaler::default()
        .with_init_scale(1024.0)
        .with_growth_interval(7);
    let mut optimizer = Optimizer::new(gpu, Sgd::default(), 5)
        .unwrap()
        .with_grad_guard(GradGuard::new().with_scaler(scaler))
        .unwrap();
    let params = gpu.upload("params", &[0.5; 5]).unwrap();
    let grads = gpu.upload("grads", &[0.0; 5]).unwrap();
    let clean = gpu.upload("clean", &[0.25; 5]).unwrap();
    let poisoned = gpu
        .upload("poisoned", &[0.25, 0.25, 0.25, 0.25, f32::INFINITY])
        .unwrap();
    let mut model = ScalerModel {
        scale: 1024.0,
        tracker: 0,
    };
    let (mut skipped, mut applied) = (0, 0);
    for encoder_index in 0..50 {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for k in 0..100u64 {
            let step = encoder_index * 100 + k;
            // Runs of clean steps long and short, so the scale both grows and backs off.
            let inf = step % 23 == 5 || step % 97 == 0 || (1000..1040).contains(&step);
            let source = if inf { &poisoned } else { &clean };
            encoder.copy_buffer_to_buffer(source, 0, &grads, 0, 20);
            optimizer
                .record_step(&mut encoder, &params, &grads)
                .unwrap();
            model.update(inf, &scaler);
            if inf {
                skipped += 1;
            } else {
                applied += 1;
            }
        }
        gpu.queue().submit([encoder.finish()]);
        let status = optimizer.read_grad_status().unwrap().unwrap();
        assert_eq!(
            (
                status.scale,
                status.growth_tracker,
                status.skipped,
                status.applied
            ),
            (model.scale, model.tracker, skipped, applied),
            "after encoder {encoder_index}"
        );
    }
    // The host learnt the device's counts without waiting, a few steps late at most.
    let (step, _) = optimizer.grad_status().expect("statuses were mapped back");
    assert!(step > 0 && step <= 5000);
}

/// 200 Adam steps recorded into one encoder, infs at chosen steps: the same params, state and
/// status as the twin, so every applied step used the bias corrections of its own count.
#[test]
fn two_hundred_steps_in_one_encoder_skip_where_the_infs_are() {
    let gpu = common::gpu();
    let len = 1025;
    let guard = GradGuard::new()
        .with_scaler(scaler(1.0, 3))
        .with_clip_norm(ClipGradNorm::new(10.0));
    let rule = Adam {
        lr: 0.01,
        ..Adam::default()
    };
    let mut optimizer = Optimizer::new(gpu, rule.clone(), len)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    // The twin with its own guard, as the GPU optimizer has.
    let mut cpu = CpuOptimizer::new(rule, len)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    let mut params_cpu = common::random_nonzero(len, 3);
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &vec![0.0; len]).unwrap();
    let clean_host = common::random_nonzero(len, 4);
    let mut poisoned_host = clean_host.clone();
    poisoned_host[len / 2] = f32::NEG_INFINITY;
    let clean = gpu.upload("clean", &clean_host).unwrap();
    let poisoned = gpu.upload("poisoned", &poisoned_host).unwrap();
    let skips = [0, 1, 17, 18, 19, 100, 150, 199];
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for step in 0..200 {
        let inf = skips.contains(&step);
        let (source, host) = match inf {
            true => (&poisoned, &poisoned_host),
            false => (&clean, &clean_host),
        };
        encoder.copy_buffer_to_buffer(source, 0, &grads, 0, len as u64 * 4);
        optimizer
            .record_step(&mut encoder, &params, &grads)
            .unwrap();
        cpu.step(&mut params_cpu, host).unwrap();
        assert_eq!(cpu.grad_status().unwrap().skip, inf);
    }
    let plain = fused_optim::GradStep::PLAIN;
    let refused = cpu.step_guarded(
        bytemuck::cast_slice_mut(&mut params_cpu),
        &[0; 4100],
        &plain,
    );
    assert!(matches!(refused, Err(Error::InvalidGuard { .. })));
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(
        common::bits(&gpu.download(&params).unwrap()),
        common::bits(&params_cpu)
    );
    for name in ["exp_avg", "exp_avg_sq"] {
        assert_eq!(
            common::bits(&optimizer.read_state(name, 0).unwrap()),
            common::bits(&cpu.read_state(name, 0).unwrap()),
            "{name}"
        );
    }
    let status = optimizer.read_grad_status().unwrap().unwrap();
    let twin = cpu.grad_status().unwrap();
    assert_eq!(common::status_bits(&status), common::status_bits(&twin));
    assert_eq!(cpu.loss_scale(), Some(status.scale));
    assert_eq!((status.applied, status.skipped), (192, 8));
    assert_eq!(optimizer.read_state("step", 0).unwrap(), vec![192.0]);
}

/// clip_grad_norm_ worked by hand on SGD with lr 1 from zero params, so the params become
/// `-coef * g`: grads (3, 4) have norm 5 and inf-norm 4; with a scaler of 1024 the grads come
/// scaled and the norm is still that of the unscaled ones.
#[test]
fn clipping_matches_clip_grad_norm_worked_by_hand() {
    let gpu = common::gpu();
    for (norm_type, norm) in [(NormType::L2, 5.0f64), (NormType::Inf, 4.0)] {
        for scale in [None, Some(1024.0f32)] {
            let mut guard =
                GradGuard::new().with_clip_norm(ClipGradNorm::new(1.0).with_norm_type(norm_type));
            guard.scaler = scale.map(|s| scaler(s, 2000));
            let rule = Sgd {
                lr: 1.0,
                ..Sgd::default()
            };
            let mut optimizer = Optimizer::new(gpu, rule, 2)
                .unwrap()
                .with_grad_guard(guard)
                .unwrap();
            let params = gpu.upload("params", &[0.0, 0.0]).unwrap();
            let s = scale.unwrap_or(1.0);
            let grads = gpu.upload("grads", &[3.0 * s, -4.0 * s]).unwrap();
            optimizer.step(&params, &grads).unwrap();
            let coef = 1.0 / (norm + 1e-6);
            let got = gpu.download(&params).unwrap();
            let status = optimizer.read_grad_status().unwrap().unwrap();
            assert!((status.total_norm as f64 - norm).abs() <= 1e-6 * norm);
            for (got, g) in got.iter().zip([3.0, -4.0]) {
                let want = -coef * g;
                assert!(
                    (*got as f64 - want).abs() <= 1e-6 * want.abs(),
                    "{norm_type:?} scale {scale:?}: {got} against {want}"
                );
            }
        }
    }
}

/// Clipping by value clamps each unscaled grad before the norm is taken.
#[test]
fn clipping_by_value_clamps_each_grad() {
    let gpu = common::gpu();
    let guard = GradGuard::new().with_clip_value(0.5);
    let rule = Sgd {
        lr: 1.0,
        ..Sgd::default()
    };
    let mut optimizer = Optimizer::new(gpu, rule, 3)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    let params = gpu.upload("params", &[0.0; 3]).unwrap();
    let grads = gpu.upload("grads", &[2.0, -0.25, -7.0]).unwrap();
    optimizer.step(&params, &grads).unwrap();
    assert_eq!(gpu.download(&params).unwrap(), vec![-0.5, 0.25, 0.5]);
    let status = optimizer.read_grad_status().unwrap().unwrap();
    assert_eq!(status.total_norm, (0.25f32 + 0.0625 + 0.25).sqrt());
}

/// The total norm of 2^26 values whose magnitudes span 1e-30 to 1e30 (squares that overflow
/// and vanish in f32): bitwise the same on two runs and as the twin's, within 1e-6 of f64;
/// then of values all tiny, and all middling, which take the other branches.
#[test]
fn the_norm_is_deterministic_and_close_to_f64_across_the_f32_range() {
    use rand::{Rng, SeedableRng};
    let gpu = common::gpu();
    let cases: [(usize, f64, f64); 3] = [
        (1 << 26, -30.0, 30.0),
        (100_003, -30.0, -20.0),
        (70_001, -3.0, 3.0),
    ];
    for (len, low, high) in cases {
        let mut rng = rand::rngs::StdRng::seed_from_u64(len as u64);
        let values: Vec<f32> = (0..len)
            .map(|_| {
                let magnitude = 10f64.powf(rng.random_range(low..high)) as f32;
                if rng.random_bool(0.5) {
                    magnitude
                } else {
                    -magnitude
                }
            })
            .collect();
        let want = values
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        let guard = GradGuard::default();
        let mut optimizer = Optimizer::new(
            gpu,
            Sgd {
                lr: 0.0,
                ..Sgd::default()
            },
            len,
        )
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
        let params = gpu.upload("params", &vec![0.0; len]).unwrap();
        let grads = gpu.upload("grads", &values).unwrap();
        let mut norms = Vec::new();
        for _ in 0..2 {
            optimizer.step(&params, &grads).unwrap();
            norms.push(optimizer.read_grad_status().unwrap().unwrap().total_norm);
        }
        let mut twin = CpuGuard::new(guard).unwrap();
        twin.check(&[&values]);
        assert_eq!(
            norms[0].to_bits(),
            norms[1].to_bits(),
            "len {len}: two runs differ"
        );
        assert_eq!(
            norms[0].to_bits(),
            twin.status().total_norm.to_bits(),
            "len {len}: twin"
        );
        let error = (norms[0] as f64 - want).abs() / want;
        assert!(
            error <= 1e-6,
            "len {len}: norm {} against {want}: {error:e}",
            norms[0]
        );
    }
}

/// Settings GradScaler or the clipping functions reject are typed errors, and the optimizer
/// is left as it was.
#[test]
fn invalid_guards_are_refused() {
    let gpu = common::gpu();
    let mut optimizer = Optimizer::new(gpu, Sgd::default(), 4).unwrap();
    let bad = [
        GradGuard::new().with_scaler(GradScaler::default().with_init_scale(0.0)),
        GradGuard::new().with_scaler(GradScaler::default().with_backoff_factor(1.5)),
        GradGuard::new().with_scaler(GradScaler::default().with_growth_interval(0)),
        GradGuard::new().with_clip_value(f32::NAN),
        GradGuard::new().with_clip_norm(ClipGradNorm::new(-1.0)),
    ];
    for guard in bad {
        let error = optimizer.set_grad_guard(guard).unwrap_err();
        assert!(matches!(error, Error::InvalidGuard { .. }), "{error}");
        assert!(optimizer.grad_guard().is_none());
        assert!(CpuGuard::new(guard).is_err());
    }
}

/// A guarded step that fails (a destroyed grads buffer) leaves the caller's encoder clean, and
/// the params, state, status and step count as they were; the next healthy step runs.
#[test]
fn a_failed_guarded_step_changes_nothing() {
    let gpu = common::gpu();
    let guard = GradGuard::new().with_scaler(GradScaler::default());
    let mut optimizer = Optimizer::new(gpu, Adam::default(), 1025)
        .unwrap()
        .with_grad_guard(guard)
        .unwrap();
    let params = gpu
        .upload("params", &common::random_nonzero(1025, 1))
        .unwrap();
    let grads = gpu
        .upload("grads", &common::random_nonzero(1025, 2))
        .unwrap();
    optimizer.step(&params, &grads).unwrap();
    let before = (
        gpu.download_bytes(&params).unwrap(),
        optimizer.read_state("exp_avg", 0).unwrap(),
        optimizer.read_grad_status().unwrap().unwrap(),
    );
    let broken = gpu
        .upload("broken", &common::random_nonzero(1025, 3))
        .unwrap();
    broken.destroy();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = optimizer
        .record_step(&mut encoder, &params, &broken)
        .unwrap_err();
    assert!(matches!(error, Error::Gpu { .. }), "{error:?}");
    common::assert_encoder_still_clean(gpu, encoder);
    let after = (
        gpu.download_bytes(&params).unwrap(),
        optimizer.read_state("exp_avg", 0).unwrap(),
        optimizer.read_grad_status().unwrap().unwrap(),
    );
    assert!(after == before);
    assert_eq!(optimizer.step_count(), 1);
    optimizer.step(&params, &grads).unwrap();
    assert_eq!(optimizer.read_grad_status().unwrap().unwrap().applied, 2);
}

/// The guard's settings changed between steps, on the GPU and in the twin alike: the scaler
/// switched off (the scale becomes 1 at once, so the next grads are not divided by the old
/// scale), clipping switched off, the scaler switched on again (a fresh scale, its own
/// `init_scale`), its interval shortened below the clean steps already counted (the scale
/// grows at the next clean step), disabled by its `enabled` flag, and enabled again. After
/// each change the status the next backward pass reads, and after each step the whole status,
/// match the twin bit for bit; params and state at the end too.
#[test]
fn every_guard_transition_matches_its_twin_bit_for_bit() {
    const LEN: usize = 1025;
    let clip = ClipGradNorm::new(4.0);
    let scaled = |init_scale, growth_interval| {
        GradGuard::new().with_scaler(scaler(init_scale, growth_interval))
    };
    let disabled = GradGuard::new().with_scaler(scaler(8.0, 2).with_enabled(false));
    // (the guard set before the step, whether the step's grads hold an inf)
    let plan = [
        (scaled(65536.0, 3).with_clip_norm(clip), false),
        (scaled(65536.0, 3).with_clip_norm(clip), false),
        (GradGuard::new().with_clip_norm(clip), false),
        (GradGuard::default(), false),
        (scaled(256.0, 4), false),
        (scaled(256.0, 4), true),
        (scaled(256.0, 4), false),
        (scaled(256.0, 4), false),
        (scaled(256.0, 2).with_clip_norm(clip), false),
        (disabled, false),
        (scaled(1024.0, 2), false),
        (scaled(1024.0, 2), true),
    ];
    let gpu = common::gpu();
    for precision in [Precision::default(), Precision::lean()] {
        let rule = Adam::adamw();
        let mut params_cpu = precision.params.encode(&common::random_nonzero(LEN, 5));
        let params = gpu.upload_bytes("params", &params_cpu).unwrap();
        let grads = gpu
            .upload_bytes("grads", &precision.grads.encode(&vec![0.0; LEN]))
            .unwrap();
        let mut cpu = CpuOptimizer::with_precision(rule.clone(), precision.clone(), LEN).unwrap();
        let mut twin = CpuGuard::new(plan[0].0).unwrap();
        let mut optimizer = Optimizer::with_precision(gpu, rule, precision.clone(), LEN)
            .unwrap()
            .with_grad_guard(plan[0].0)
            .unwrap();
        for (step, &(guard, inf)) in plan.iter().enumerate() {
            let what = format!("[{precision}] step {} under {guard:?}", step + 1);
            optimizer.set_grad_guard(guard).unwrap();
            twin.set_guard(guard).unwrap();
            let scale = optimizer.read_grad_status().unwrap().unwrap().scale;
            assert_eq!(scale.to_bits(), twin.status().scale.to_bits(), "{what}");
            let mut values: Vec<f32> = common::random_nonzero(LEN, 50 + step as u64)
                .into_iter()
                .map(|g| g * scale)
                .collect();
            if inf {
                values[LEN - 1] = f32::INFINITY;
            }
            let mut twins = Twins {
                gpu,
                cpu: &mut cpu,
                guard: &mut twin,
                params: &mut params_cpu,
            };
            twins.step_with(&mut optimizer, &params, &grads, &values, &precision, &what);
        }
        assert!(
            gpu.download_bytes(&params).unwrap() == params_cpu,
            "[{precision}]"
        );
        for name in optimizer.state_names() {
            let got = optimizer.read_state(name, 0).unwrap();
            assert_eq!(
                common::bits(&got),
                common::bits(&cpu.read_state(name, 0).unwrap()),
                "[{precision}] {name}"
            );
        }
        // The scaler grew (interval shortened), backed off, was reset to 1 and restarted.
        assert_eq!(twin.status().scale, 512.0, "[{precision}]");
    }
}

/// Switching the scaler on or off writes the scale ahead of the next submission, so it is
/// refused while a recorded step waits to be submitted (it would run with the new scale),
/// with nothing changed; once submitted, it goes through.
#[test]
fn a_scaler_switched_with_a_step_unsubmitted_is_refused() {
    let gpu = common::gpu();
    let (params, grads) = common::params_and_grads(gpu, 1025);
    let scaling = GradGuard::new().with_scaler(GradScaler::default());
    let mut optimizer = Optimizer::new(gpu, Adam::default(), 1025)
        .unwrap()
        .with_grad_guard(scaling)
        .unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    optimizer
        .record_step(&mut encoder, &params, &grads)
        .unwrap();
    let error = optimizer.set_grad_guard(GradGuard::default()).unwrap_err();
    assert!(
        matches!(error, Error::UnsubmittedStep { step: 1, .. }),
        "{error:?}"
    );
    assert_eq!(optimizer.grad_guard(), Some(&scaling));
    // Settings that keep the scaler on change nothing on the device: no need to wait.
    let clipped = scaling.with_clip_value(1.0);
    optimizer.set_grad_guard(clipped).unwrap();
    gpu.queue().submit([encoder.finish()]);
    optimizer.set_grad_guard(GradGuard::default()).unwrap();
    let status = optimizer.read_grad_status().unwrap().unwrap();
    assert_eq!((status.scale, status.applied), (1.0, 1));
}

/// Two shards of a set under a split guard: each records its partial into one buffer (what
/// an all-gather would assemble), then each steps with both. Every shard's status is the
/// twin's (its partial per shard, then `check_partials`), bit for bit, through clipping,
/// growth and an inf in the second shard that skips both; the params are the twin's. A shard
/// stepping under a guard with its own grads alone is refused.
#[test]
fn shards_under_a_split_guard_agree_and_match_the_twin_bit_for_bit() {
    let gpu = common::gpu();
    let tensors: Vec<(String, usize)> = (0..40)
        .map(|k| (format!("t{k}"), 1 + (k * 397) % 5000))
        .collect();
    let names: Vec<String> = tensors.iter().map(|(name, _)| name.clone()).collect();
    let precision: Precision = "bf16,master=remainder,state=8bit".parse().unwrap();
    let guard = GradGuard::new()
        .with_scaler(scaler(1024.0, 2))
        .with_clip_norm(ClipGradNorm::new(1.0));
    let groups =
        || vec![ParamGroup::new(Adam::default(), names.clone()).with_precision(precision.clone())];
    let layout = ParamSet::new(gpu, &tensors, groups())
        .unwrap()
        .layout()
        .clone();
    let len = layout.len() as usize;
    let ranges = layout.shards(2).unwrap();
    let mut shards: Vec<ParamSet<Adam>> = ranges
        .iter()
        .map(|range| {
            ParamSet::shard(gpu, &tensors, groups(), range.clone())
                .unwrap()
                .with_grad_guard(guard)
                .unwrap()
        })
        .collect();
    let mut cpu = CpuOptimizer::with_precision(Adam::default(), precision.clone(), len).unwrap();
    let mut twin = CpuGuard::new(guard).unwrap();
    let mut params_cpu = precision.params.encode(&common::random_nonzero(len, 11));
    let params = gpu.upload_bytes("params", &params_cpu).unwrap();
    let zeros = precision.grads.encode(&vec![0.0; len]);
    let grads = gpu.upload_bytes("grads", &zeros).unwrap();
    let gathered = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("gathered partials"),
        size: 2 * std::mem::size_of::<GradPartial>() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    assert!(matches!(
        shards[0].step(&params, &grads),
        Err(Error::ShardUnsupported { .. })
    ));
    for step in 0..6u64 {
        let scale = twin.status().scale;
        let mut values: Vec<f32> = common::random_nonzero(len, 20 + step)
            .iter()
            .map(|v| v * scale)
            .collect();
        if step == 3 {
            values[len - 5] = f32::INFINITY;
        }
        let grads_cpu = precision.grads.encode(&values);
        gpu.queue().write_buffer(&grads, 0, &grads_cpu);
        let decoded = precision.grads.decode(&grads_cpu, len);
        let partials: Vec<GradPartial> = ranges
            .iter()
            .map(|r| twin.partial(&[&decoded[r.start as usize..r.end as usize]]))
            .collect();
        let grad_step = twin.check_partials(&partials);
        cpu.step_guarded(&mut params_cpu, &grads_cpu, &grad_step)
            .unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for (rank, shard) in shards.iter_mut().enumerate() {
            let offset = (rank * std::mem::size_of::<GradPartial>()) as u64;
            shard
                .record_grad_partial(&mut encoder, (&params, &grads), &gathered, offset)
                .unwrap();
        }
        for shard in &mut shards {
            shard
                .record_step_with_partials(&mut encoder, (&params, &grads), &gathered, 2)
                .unwrap();
        }
        gpu.queue().submit([encoder.finish()]);
        for (rank, shard) in shards.iter().enumerate() {
            let status = shard.read_grad_status().unwrap().unwrap();
            assert_eq!(
                common::status_bits(&status),
                common::status_bits(&twin.status()),
                "shard {rank} after step {step}: {status:?} against {:?}",
                twin.status()
            );
        }
    }
    assert_eq!(twin.status().skipped, 1);
    let got = gpu.download_bytes(&params).unwrap();
    let differ = got.iter().zip(&params_cpu).filter(|(g, w)| g != w).count();
    assert_eq!(differ, 0, "bytes of the params differ from the twin's");
}
