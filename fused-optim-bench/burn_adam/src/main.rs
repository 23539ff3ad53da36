//! burn 0.22's Adam (wgpu on Vulkan, with burn's fusion) over one tensor, wall clock per step
//! with a device sync after each, for the same-run comparison in BENCHMARKS.md.
//!
//! It calls burn's `Adam` optimizer on a parameter tensor and a gradient directly, as burn's
//! module optimizer does per parameter: no autodiff, no forward or backward pass, only the
//! update. (With autodiff and a backward pass, Mesa 22.3.6's lavapipe crashes compiling one of
//! burn's kernels.)
//!
//! Usage: `cargo run --release -- [PARAMS] [STEPS]` (default 16777216 and 30).

use std::time::Instant;

use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let n = args.next().transpose().expect("PARAMS").unwrap_or(16 << 20);
    let steps = args.next().transpose().expect("STEPS").unwrap_or(30).max(1);
    let device = Device::vulkan(DeviceKind::DefaultDevice);
    let adam = AdamConfig::new().build();
    let mut param = Tensor::<1>::random([n], Distribution::Default, &device);
    let grad = Tensor::<1>::random([n], Distribution::Default, &device);
    let mut state = None;
    let warmup = 3;
    let mut times = Vec::new();
    for step in 0..warmup + steps {
        device.sync().expect("sync");
        let start = Instant::now();
        let (next, next_state) = adam.step(1e-3, param, grad.clone(), state);
        (param, state) = (next, next_state);
        device.sync().expect("sync");
        if step >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "burn 0.22 adam, {n} params: median {:.3} ms (min {:.3}, max {:.3}) over {steps} steps",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
