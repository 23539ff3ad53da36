//! The textbook example f(θ) = θ² − 2θ + 1 from θ₀ = 0 (gradient 2θ − 2), through both the CPU
//! twin and the GPU kernel, against values worked out by hand; and Lion against its paper's
//! formula worked in f64.

mod common;

use fused_optim::{Adam, CpuOptimizer, Lion, Optimizer, RmsProp, Sgd, UpdateRule};

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

/// Lion against its paper's update (Chen et al. 2023, Program 1), worked in f64:
/// `update = interp(g, m, beta1).sign(); update += wd * theta; theta -= lr * update;
/// m = interp(g, m, beta2)`, over five steps on random data at an awkward size, through the
/// twin and the GPU. They agree to f32 rounding; a sign flip would cost 2 * lr.
#[test]
fn lion_follows_the_papers_formula_in_f64() {
    let gpu = common::gpu();
    let len = 1025;
    let (lr, beta1, beta2, wd) = (0.05, 0.8, 0.9, 0.3);
    let rule = Lion {
        lr,
        betas: (beta1, beta2),
        weight_decay: wd,
        maximize: false,
    };
    let mut params_cpu = common::random_nonzero(len, 11);
    let mut theta: Vec<f64> = params_cpu.iter().map(|&p| p as f64).collect();
    let mut m = vec![0.0f64; len];
    let params = gpu.upload("params", &params_cpu).unwrap();
    let grads = gpu.upload("grads", &params_cpu).unwrap();
    let mut twin = CpuOptimizer::new(rule.clone(), len).unwrap();
    let mut optimizer = Optimizer::new(gpu, rule, len).unwrap();
    for step in 0..5 {
        let grads_cpu = common::random_nonzero(len, 12 + step);
        for ((theta, m), &g) in theta.iter_mut().zip(&mut m).zip(&grads_cpu) {
            let g = g as f64;
            let update = (beta1 * *m + (1.0 - beta1) * g).signum() + wd * *theta;
            *theta -= lr * update;
            *m = beta2 * *m + (1.0 - beta2) * g;
        }
        twin.step(&mut params_cpu, &grads_cpu).unwrap();
        gpu.write(&grads, &grads_cpu).unwrap();
        optimizer.step(&params, &grads).unwrap();
    }
    let want: Vec<f32> = theta.iter().map(|&x| x as f32).collect();
    let momentum: Vec<f32> = m.iter().map(|&x| x as f32).collect();
    for (who, got, exp_avg) in [
        (
            "cpu twin",
            params_cpu,
            twin.read_state("exp_avg", 0).unwrap(),
        ),
        (
            "gpu",
            gpu.download(&params).unwrap(),
            optimizer.read_state("exp_avg", 0).unwrap(),
        ),
    ] {
        for (what, got, want) in [("params", got, &want), ("exp_avg", exp_avg, &momentum)] {
            let error = common::worst_relative_error(&got, want);
            assert!(
                error <= 1e-5,
                "lion {who} {what} off the paper by {error:e}"
            );
        }
    }
}
