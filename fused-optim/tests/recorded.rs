//! Any number of steps recorded before one submit: each carries its own per-step values (lr,
//! bias corrections, SGD's first step), whether they travel as immediates or through the
//! uniform each step copies in. 200 steps with a different lr each are recorded into one
//! encoder and submitted once, for every registered rule's variants, through `Optimizer`, `ParamSet` and
//! `ForeachOptimizer`, and compared with the CPU twin stepped the same way. Windows are forced
//! small so the steps cross window edges and scalar tails too.

mod common;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    Adam, CpuOptimizer, ForeachOptimizer, GpuContext, Hyperparameter, Optimizer, ParamGroup,
    ParamSet, RmsProp, UpdateRule,
};

const STEPS: usize = 200;

/// A distinct lr for every step, small enough that 200 steps stay well-conditioned.
fn lr(step: usize) -> f64 {
    1e-3 * (1.0 + (step % 13) as f64 / 4.0 + step as f64 / 1000.0)
}

/// Two vector windows and a scalar tail under the forced limits (1004-element windows).
const LEN: usize = 2011;

fn check_optimizer<R: UpdateRule>(gpu: &GpuContext, rule: R, what: &str) {
    let mut params_cpu = common::random_nonzero(LEN, 1);
    let grads_cpu = common::random_nonzero(LEN, 2);
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &grads_cpu).unwrap();
    let mut twin = CpuOptimizer::new(rule.clone(), LEN).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule.clone(), LEN).unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for step in 0..STEPS {
        twin.set_lr(lr(step)).unwrap();
        optimizer.set_lr(lr(step)).unwrap();
        twin.step(&mut params_cpu, &grads_cpu).unwrap();
        optimizer
            .record_step(&mut encoder, &params, &grads)
            .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    let label = format!("{what}: {} {rule:?}", rule.name());
    common::assert_twin_close(&label, &gpu.download(&params).unwrap(), &params_cpu);
    for name in optimizer.state_names() {
        let (got, want) = (
            optimizer.read_state(name, 0).unwrap(),
            twin.read_state(name, 0).unwrap(),
        );
        common::assert_twin_close(&format!("{label} {name}"), &got, &want);
    }
}

/// Every registered rule's variants, with a weight decay of 0.01 where the variant has none,
/// so the L2 or decoupled term is recorded too.
struct EveryVariant<'a> {
    gpu: &'a GpuContext,
    what: &'a str,
}

impl RuleVisitor for EveryVariant<'_> {
    fn visit<R: RegisteredRule>(&mut self) {
        for mut rule in R::variants() {
            let decay = rule
                .hyperparameters()
                .into_iter()
                .find(|(name, _)| *name == "weight_decay");
            if decay == Some(("weight_decay", Hyperparameter::Float(0.0))) {
                rule.set_hyperparameter("weight_decay", 0.01.into())
                    .unwrap();
            }
            check_optimizer(self.gpu, rule, self.what);
        }
    }
}

#[test]
fn every_rule_records_200_steps_before_one_submit() {
    for (values, gpu) in common::step_value_contexts() {
        let what = format!("{STEPS} steps, one submit, {values:?}");
        visit_rules(&mut EveryVariant {
            gpu: &gpu,
            what: &what,
        });
    }
}

/// Two groups with their own lr schedules over tensors of awkward sizes.
#[test]
fn a_parameter_set_records_200_steps_before_one_submit() {
    let tensors = [("w", 2011), ("b", 3), ("v", 1025), ("c", 1)];
    for (values, gpu) in common::step_value_contexts() {
        let rule = Adam {
            weight_decay: 0.01,
            ..Adam::adamw()
        };
        let groups = vec![
            ParamGroup::new(rule.clone(), ["w", "v"]),
            ParamGroup::new(
                Adam {
                    weight_decay: 0.0,
                    ..rule
                },
                ["b", "c"],
            ),
        ];
        let mut set = ParamSet::new(&gpu, &tensors, groups).unwrap();
        let layout = set.layout().clone();
        let mut params_cpu = vec![0.0; layout.len() as usize];
        let mut grads_cpu = vec![0.0; layout.len() as usize];
        let mut twins = Vec::new();
        for (index, &(name, len)) in tensors.iter().enumerate() {
            let seed = 10 * index as u64;
            let slot = layout.tensor(name).unwrap().clone();
            params_cpu[slot.range()].copy_from_slice(&common::random_nonzero(len, seed));
            grads_cpu[slot.range()].copy_from_slice(&common::random_nonzero(len, seed + 1));
            let rule = set.groups()[slot.group].clone();
            twins.push((slot, CpuOptimizer::new(rule, len).unwrap()));
        }
        let params = gpu.upload("params", &params_cpu).unwrap();
        let grads = gpu.upload("grads", &grads_cpu).unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for step in 0..STEPS {
            let lrs = [lr(step), 2.0 * lr(STEPS - step)];
            for (group, lr) in lrs.into_iter().enumerate() {
                set.set_group_lr(group, lr).unwrap();
            }
            set.record_step(&mut encoder, &params, &grads).unwrap();
            for (slot, twin) in &mut twins {
                twin.set_lr(lrs[slot.group]).unwrap();
                twin.step(&mut params_cpu[slot.range()], &grads_cpu[slot.range()])
                    .unwrap();
            }
        }
        gpu.queue().submit([encoder.finish()]);
        let got = gpu.download(&params).unwrap();
        for (slot, twin) in &twins {
            let label = format!("parameter set, {values:?}: {}", slot.name);
            common::assert_twin_close(&label, &got[slot.range()], &params_cpu[slot.range()]);
            for state in ["exp_avg", "exp_avg_sq"] {
                common::assert_twin_close(
                    &format!("{label} {state}"),
                    &set.read_state(state, &slot.name).unwrap(),
                    &twin.read_state(state, 0).unwrap(),
                );
            }
        }
    }
}

/// Steps recorded into several encoders, submitted together, behave like one encoder.
#[test]
fn a_foreach_list_records_200_steps_into_several_encoders_before_one_submit() {
    let lens = [1, 3, 1025, 2011];
    let rule = RmsProp {
        momentum: 0.5,
        weight_decay: 0.01,
        ..RmsProp::default()
    };
    for (values, gpu) in common::step_value_contexts() {
        let mut optimizer = ForeachOptimizer::new(&gpu, rule.clone(), &lens).unwrap();
        let mut host = Vec::new();
        let mut buffers = Vec::new();
        for (index, &len) in lens.iter().enumerate() {
            let params = common::random_nonzero(len, 20 * index as u64);
            let grads = common::random_nonzero(len, 20 * index as u64 + 1);
            buffers.push((
                gpu.upload("params", &params).unwrap(),
                gpu.upload("grads", &grads).unwrap(),
            ));
            host.push((params, grads, CpuOptimizer::new(rule.clone(), len).unwrap()));
        }
        let pairs: Vec<(&wgpu::Buffer, &wgpu::Buffer)> =
            buffers.iter().map(|(p, g)| (p, g)).collect();
        let mut command_buffers = Vec::new();
        for chunk in 0..4 {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            for step in chunk * STEPS / 4..(chunk + 1) * STEPS / 4 {
                optimizer.set_lr(lr(step)).unwrap();
                optimizer.record_step(&mut encoder, &pairs).unwrap();
                for (params, grads, twin) in &mut host {
                    twin.set_lr(lr(step)).unwrap();
                    twin.step(params, grads).unwrap();
                }
            }
            command_buffers.push(encoder.finish());
        }
        gpu.queue().submit(command_buffers);
        for (index, ((params, _, twin), (params_gpu, _))) in host.iter().zip(&buffers).enumerate() {
            let label = format!("foreach, {values:?}: tensor {index}");
            common::assert_twin_close(&label, &gpu.download(params_gpu).unwrap(), params);
            for state in ["square_avg", "momentum_buffer"] {
                common::assert_twin_close(
                    &format!("{label} {state}"),
                    &optimizer.read_state(state, index).unwrap(),
                    &twin.read_state(state, 0).unwrap(),
                );
            }
        }
    }
}
