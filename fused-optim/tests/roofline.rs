//! The benchmark's roofline rule moves exactly the bytes it claims: every element of params and
//! of each kept state buffer is read and written, at a size that is not a multiple of the
//! workgroup, through the same engine and windows as the rules, and its unfused chain agrees.

mod common;

use fused_optim::baseline::{Roofline, UnfusedChain};
use fused_optim::{CpuOptimizer, Optimizer};

#[test]
fn roofline_touches_every_element_of_every_buffer() {
    let gpu = common::gpu();
    let len = 1025;
    for states in 0..=Roofline::MAX_STATES {
        let rule = Roofline { states };
        let mut params_cpu = common::random_nonzero(len, 1);
        let grads_cpu = common::random_nonzero(len, 2);
        let params = gpu.upload("params", &params_cpu).unwrap();
        let unfused_params = gpu.upload("params", &params_cpu).unwrap();
        let grads = gpu.upload("grads", &grads_cpu).unwrap();
        let mut optimizer = Optimizer::new(gpu, rule, len).unwrap();
        assert_eq!(
            optimizer.bytes_per_step(),
            len as u64 * 4 * (3 + 2 * states as u64)
        );
        let mut unfused = UnfusedChain::new(gpu, rule, len).unwrap();
        let mut twin = CpuOptimizer::new(rule, len).unwrap();
        for _ in 0..2 {
            optimizer.step(&params, &grads).unwrap();
            unfused.step(&unfused_params, &grads).unwrap();
            twin.step(&mut params_cpu, &grads_cpu).unwrap();
        }
        assert_eq!(
            gpu.download(&params).unwrap(),
            params_cpu,
            "params, {states} states"
        );
        assert_eq!(
            gpu.download(&unfused_params).unwrap(),
            params_cpu,
            "unfused params, {states} states"
        );
        assert_eq!(
            gpu.download(&grads).unwrap(),
            grads_cpu,
            "grads, {states} states"
        );
        for name in optimizer.state_names() {
            let want = twin.read_state(name, 0).unwrap();
            assert!(want.iter().all(|&v| v != 0.0), "{name} was not written");
            assert_eq!(
                optimizer.read_state(name, 0).unwrap(),
                want,
                "{name}, {states} states"
            );
            assert_eq!(
                unfused.read_state(name).unwrap(),
                want,
                "unfused {name}, {states} states"
            );
        }
    }
}
