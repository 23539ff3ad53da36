//! The benchmark's roofline kernel moves exactly the bytes it claims: every element of params
//! and of each used state buffer is read and written once, at a size that is not a multiple of
//! the workgroup, and unused state slots are left alone.

mod common;

use fused_optim::bench::{pattern, Roofline};

#[test]
fn roofline_touches_every_element_of_every_buffer_once() {
    let gpu = common::gpu();
    let len = 1025;
    let start = pattern(len);
    for states in 0..=Roofline::MAX_STATES {
        let roofline = Roofline::new(gpu, len, states).unwrap();
        assert_eq!(
            roofline.bytes_per_step(),
            len as u64 * 4 * (3 + 2 * states as u64)
        );
        roofline.step(gpu).unwrap();
        let doubled: Vec<f32> = start.iter().map(|x| x + x).collect();
        assert_eq!(
            gpu.download(&roofline.params).unwrap(),
            doubled,
            "params, {states} states"
        );
        assert_eq!(
            gpu.download(&roofline.grads).unwrap(),
            start,
            "grads, {states} states"
        );
        for (slot, buffer) in roofline.state.iter().enumerate() {
            let want = if slot < states {
                doubled.clone()
            } else {
                vec![0.0]
            };
            assert_eq!(
                gpu.download(buffer).unwrap(),
                want,
                "state {slot}, {states} states"
            );
        }
    }
}
