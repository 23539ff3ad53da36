//! The CPU twins and the GPU kernels against real `torch.optim` (single-tensor CPU path):
//! every registered rule and flag combination PyTorch has, the rule found by its registry key
//! and built from PyTorch's option names, three steps with the lr changed before each,
//! params and every state compared by name. The golden values come from
//! tests/pytorch_reference.py; unlike tests/twin.rs, nothing here shares code with the kernels.

mod common;

use fused_optim::{
    visit_rules, CpuOptimizer, Hyperparameter, Optimizer, RegisteredRule, RuleVisitor, UpdateRule,
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
            cpu.state(name).unwrap(),
            optimizer.read_state(name).unwrap(),
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

/// The rule a case describes: the registered rule whose key is the case's `rule`, with
/// PyTorch's defaults, the case's options set by name and the case's first lr.
fn rule_of<R: RegisteredRule>(case: &Value) -> R {
    let mut rule = R::default();
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
        rule.set_hyperparameter(name, value)
            .unwrap_or_else(|e| panic!("{}: {e}", R::KEY));
    }
    rule.validate().unwrap();
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
