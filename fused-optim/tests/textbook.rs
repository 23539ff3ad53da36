//! The textbook example f(θ) = θ² − 2θ + 1 from θ₀ = 0 (gradient 2θ − 2), through both the CPU
//! twin and the GPU kernel, against values worked out by hand.

mod common;

use fused_optim::{Adam, CpuOptimizer, Optimizer, RmsProp, Sgd, UpdateRule};

/// θ after each step, from the twin and from the GPU.
fn trajectory<R: UpdateRule>(rule: R, steps: usize) -> (Vec<f32>, Vec<f32>) {
    let gpu = common::gpu();
    let mut cpu = CpuOptimizer::new(rule.clone(), 1).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule, 1).unwrap();
    let mut theta_cpu = [0.0f32];
    let params = gpu.upload("theta", &theta_cpu).unwrap();
    let grads = gpu.upload("grad", &[0.0]).unwrap();
    let (mut on_cpu, mut on_gpu) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let grad = [2.0 * theta_cpu[0] - 2.0];
        cpu.step(&mut theta_cpu, &grad).unwrap();
        on_cpu.push(theta_cpu[0]);

        let theta_gpu = gpu.download(&params).unwrap()[0];
        gpu.write(&grads, &[2.0 * theta_gpu - 2.0]).unwrap();
        optimizer.step(&params, &grads).unwrap();
        on_gpu.push(gpu.download(&params).unwrap()[0]);
    }
    (on_cpu, on_gpu)
}

fn assert_close(label: &str, got: &[f32], want: &[f32], tolerance: f32) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance,
            "{label}, step {}: θ = {g}, expected {w} ± {tolerance}",
            step + 1
        );
    }
}

fn check<R: UpdateRule>(label: &str, rule: R, want: &[f32], tolerance: f32) {
    let (cpu, gpu) = trajectory(rule, want.len());
    assert_close(&format!("{label} (cpu twin)"), &cpu, want, tolerance);
    assert_close(&format!("{label} (gpu)"), &gpu, want, tolerance);
}

#[test]
fn gradient_descent() {
    let rule = Sgd {
        lr: 0.1,
        ..Sgd::default()
    };
    check("sgd", rule, &[0.2, 0.36, 0.488], 1e-6);
}

#[test]
fn momentum() {
    let rule = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    check("sgd momentum 0.9", rule, &[0.2, 0.54], 1e-6);
}

#[test]
fn rmsprop_eps_inside_sqrt() {
    let rule = RmsProp {
        lr: 0.01,
        alpha: 0.9,
        eps_inside_sqrt: true,
        ..RmsProp::default()
    };
    // 0.02 / sqrt(0.4) = 0.031623; then 0.031623 + 0.01 * 1.936754 / sqrt(0.735102) = 0.054212.
    check("rmsprop", rule, &[0.031623, 0.054212], 1e-5);
}

#[test]
fn adam() {
    let rule = Adam {
        lr: 0.01,
        ..Adam::default()
    };
    // Step 2: m̂ = -0.378 / 0.19 = -1.989474 (not the -2.0989 of a widely copied write-up),
    // v̂ = 0.0079164 / 0.001999 = 3.960180, θ = 0.01 + 0.01 * 1.989474 / 1.990020 = 0.019997.
    check("adam", rule, &[0.0100, 0.019997], 1e-5);
}
