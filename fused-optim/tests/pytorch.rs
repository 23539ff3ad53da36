//! The CPU twins and the GPU kernels against real `torch.optim` (single-tensor CPU path):
//! every registered rule and flag combination PyTorch has, the rule found by its registry key
//! and built from the `param_groups` entry PyTorch held, three steps with the lr changed before each,
//! params and every state compared by name. The golden values come from
//! tests/pytorch_reference.py; unlike tests/twin.rs, nothing here shares code with the kernels.

mod common;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    Adam, AdamW, CpuOptimizer, Error, GpuContext, Hyperparameter, Optimizer, ParamSet, Sgd,
    UpdateRule,
};
use serde_json::Value;

/// PyTorch computes the same formulas with different f32 operations (`lerp_` for the moving
/// averages, division by a scalar as multiplication by its reciprocal), each a rounding apart,
/// so most cases agree within 1e-6. Centered RMSprop subtracts grad_avg² from square_avg, which
/// magnifies those roundings up to 10 times at alpha = 0.9, and momentum accumulates them: the
/// worst case seen (centered with momentum) is 4.8e-6. The bound leaves 10 times that for GPUs
/// that contract multiply-adds into fma, while any formula, flag or epsilon difference moves
/// these bold hyperparameters by 1e-3 or more.
const TOLERANCE: f64 = 5e-5;

/// Runs one case through the twin and the GPU and returns its worst relative error.
fn check<R: UpdateRule>(rule: R, case: &Value) -> f64 {
    let gpu = common::gpu();
    let mut params_cpu = common::floats(&case["params"]);
    let len = params_cpu.len();
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &params_cpu).unwrap();
    let mut cpu = CpuOptimizer::new(rule.clone(), len).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule.clone(), len).unwrap();
    let steps = case["learning_rates"].as_array().unwrap();
    for (lr, grads_cpu) in steps.iter().zip(case["grads"].as_array().unwrap()) {
        let (lr, grads_cpu) = (lr.as_f64().unwrap(), common::floats(grads_cpu));
        cpu.set_lr(lr).unwrap();
        optimizer.set_lr(lr).unwrap();
        cpu.step(&mut params_cpu, &grads_cpu).unwrap();
        gpu.write(&grads, &grads_cpu).unwrap();
        optimizer.step(&params, &grads).unwrap();
    }
    let expected = &case["expected"];
    let torch_state = expected["state"].as_object().unwrap();
    let mut ours: Vec<&str> = optimizer.state_names();
    let mut theirs: Vec<&str> = torch_state.keys().map(String::as_str).collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    assert_eq!(ours, theirs, "{rule:?}: state names differ from PyTorch's");

    let mut compared = vec![(
        "params",
        common::floats(&expected["params"]),
        params_cpu,
        gpu.download(&params).unwrap(),
    )];
    for (name, want) in torch_state {
        compared.push((
            name.as_str(),
            common::floats(want),
            cpu.read_state(name, 0).unwrap(),
            optimizer.read_state(name, 0).unwrap(),
        ));
    }
    let mut worst: f64 = 0.0;
    for (name, want, twin, kernel) in compared {
        for (who, got) in [("cpu twin", twin), ("gpu", kernel)] {
            let error = common::worst_relative_error(&got, &want);
            assert!(
                error <= TOLERANCE,
                "{rule:?}: {who} {name} off PyTorch by {error:e} (bound {TOLERANCE:e})\n got  {got:?}\n want {want:?}"
            );
            worst = worst.max(error);
        }
    }
    worst
}

/// The rule a case describes: the registered rule whose key is the case's `rule`, built from
/// the `param_groups` entry PyTorch's optimizer held (every key it keeps, `foreach`, `fused`,
/// `capturable`, `differentiable` and `params` included), as a porter hands it over; the
/// same as PyTorch's defaults with the case's options set by name.
fn rule_of<R: RegisteredRule>(case: &Value) -> R {
    let rule =
        R::from_param_group(&case["param_group"]).unwrap_or_else(|e| panic!("{}: {e}", R::KEY));
    let mut by_name = R::default();
    let options = case["options"].as_object().expect("options");
    let lr = case["learning_rates"][0].as_f64().unwrap();
    let values = options.iter().map(|(name, value)| {
        let value = match value {
            Value::Bool(on) => Hyperparameter::Bool(*on),
            Value::Number(x) => Hyperparameter::Float(x.as_f64().unwrap()),
            Value::Array(pair) => Hyperparameter::Pair(
                pair[0].as_f64().expect("a number"),
                pair[1].as_f64().expect("a number"),
            ),
            other => panic!("option {name} = {other}"),
        };
        (name.as_str(), value)
    });
    for (name, value) in values.chain([("lr", Hyperparameter::Float(lr))]) {
        by_name.set_hyperparameter(name, value).unwrap();
    }
    assert_eq!(rule.hyperparameters(), by_name.hyperparameters());
    rule
}

/// Runs every case of `reference` whose rule is registered, by its key.
struct Cases<'a> {
    cases: &'a [Value],
    checked: usize,
    worst: f64,
}

impl RuleVisitor for Cases<'_> {
    fn visit<R: RegisteredRule>(&mut self) {
        for case in self.cases.iter().filter(|case| case["rule"] == R::KEY) {
            let error = check(rule_of::<R>(case), case);
            self.worst = self.worst.max(error);
            self.checked += 1;
        }
    }
}

#[test]
fn every_rule_matches_pytorch() {
    let reference: Value =
        serde_json::from_str(include_str!("data/pytorch_reference.json")).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let mut run = Cases {
        cases,
        checked: 0,
        worst: 0.0,
    };
    visit_rules(&mut run);
    assert_eq!(
        run.checked,
        cases.len(),
        "every case's rule must be registered"
    );
    println!(
        "{} cases against torch {}: worst relative error {:.2e}",
        cases.len(),
        reference["torch"],
        run.worst
    );
}

/// `AdamW` takes `torch.optim.AdamW`'s groups, runs as Adam with decoupled weight decay,
/// and refuses Adam's (an L2 penalty), as it refuses switching decoupling off.
#[test]
fn adamw_is_torch_adamw() {
    let reference: Value =
        serde_json::from_str(include_str!("data/pytorch_reference.json")).unwrap();
    let adam_cases = reference["cases"].as_array().unwrap().iter();
    let mut decoupled = 0;
    for case in adam_cases.filter(|case| case["rule"] == "adam") {
        let group = &case["param_group"];
        let adam = Adam::from_param_group(group).unwrap();
        match AdamW::from_param_group(group) {
            Ok(adamw) => {
                assert!(adam.decoupled_weight_decay);
                assert_eq!(Adam::from(adamw), adam);
                decoupled += 1;
            }
            Err(error) => {
                assert!(!adam.decoupled_weight_decay);
                assert!(matches!(
                    error,
                    Error::InvalidConfig {
                        field: "decoupled_weight_decay",
                        ..
                    }
                ));
            }
        }
    }
    assert_eq!(decoupled, 4);
    assert_eq!(AdamW::default().weight_decay, 0.01);
    assert_eq!(Adam::from(AdamW::default()), Adam::adamw());
    let mut adamw = AdamW::default();
    let off = adamw.set_hyperparameter("decoupled_weight_decay", Hyperparameter::Bool(false));
    assert!(off.is_err());
    assert_eq!(adamw, AdamW::default());
}

/// A param group as JSON: implementation choices are flags or null and change nothing;
/// anything else wrong is an error naming it.
#[test]
fn param_groups_are_checked() {
    let group = |extra: Value| {
        let mut group = serde_json::json!({
            "lr": 0.01, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
            "nesterov": true, "maximize": false, "foreach": null, "differentiable": false,
            "fused": null, "params": [1, 0], "initial_lr": 0.1,
        });
        group
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        group
    };
    let sgd = Sgd::from_param_group(&group(serde_json::json!({}))).unwrap();
    assert_eq!((sgd.lr, sgd.momentum, sgd.nesterov), (0.01, 0.9, true));
    for choice in ["foreach", "fused", "capturable", "differentiable"] {
        let on = Sgd::from_param_group(&group(serde_json::json!({ choice: true }))).unwrap();
        assert_eq!(on, sgd);
        let text = Sgd::from_param_group(&group(serde_json::json!({ choice: "yes" })));
        assert!(
            matches!(text, Err(Error::HyperparameterKind { .. })),
            "{choice}"
        );
    }
    let cases = [
        (
            serde_json::json!({"amsgrad": false}),
            "UnknownHyperparameter",
        ),
        (serde_json::json!({"rho": "0.9"}), "UnknownHyperparameter"),
        (serde_json::json!({"lr": "0.1"}), "HyperparameterKind"),
        (serde_json::json!({"lr": null}), "HyperparameterKind"),
        (
            serde_json::json!({"momentum": [0.9, 0.9]}),
            "HyperparameterKind",
        ),
        (serde_json::json!({"lr": -1.0}), "InvalidConfig"),
    ];
    for (extra, want) in cases {
        let error = Sgd::from_param_group(&group(extra.clone())).unwrap_err();
        assert!(format!("{error:?}").starts_with(want), "{extra}: {error:?}");
    }
    let names = ["w", "b"];
    let made =
        fused_optim::ParamGroup::<Sgd>::from_param_group(&group(serde_json::json!({})), &names);
    assert_eq!(made.unwrap().tensors, ["b", "w"]);
    let past = fused_optim::ParamGroup::<Sgd>::from_param_group(
        &group(serde_json::json!({"params": [2]})),
        &names,
    );
    assert!(matches!(
        past,
        Err(Error::ParamIndex { index: 2, count: 2 })
    ));
}

/// A parameter set from a PyTorch optimizer's `param_groups`: each entry a group of the
/// tensors its indices name, with its own hyperparameters.
#[test]
fn a_parameter_set_is_built_from_param_groups() {
    let gpu = GpuContext::new().unwrap();
    let groups = serde_json::json!([
        {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "amsgrad": false,
         "maximize": false, "foreach": null, "capturable": false, "differentiable": false,
         "fused": null, "decoupled_weight_decay": true, "params": [0, 2]},
        {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": false,
         "maximize": false, "foreach": null, "capturable": false, "differentiable": false,
         "fused": null, "decoupled_weight_decay": true, "params": [1]},
    ]);
    let tensors = [("fc.weight", 96), ("fc.bias", 3), ("head.weight", 33)];
    let set = ParamSet::<AdamW>::from_param_groups(&gpu, &tensors, &groups).unwrap();
    let decay = |g: usize| set.groups()[g].weight_decay;
    assert_eq!((decay(0), decay(1)), (0.01, 0.0));
    let group = |name: &str| set.layout().tensor(name).unwrap().group;
    assert_eq!(
        (group("fc.weight"), group("fc.bias"), group("head.weight")),
        (0, 1, 0)
    );
}
