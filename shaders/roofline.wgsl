// The benchmark's floor (src/bench.rs `Roofline`), appended to shaders/common.wgsl like an
// update rule so it shares the rules' bindings, entry point and indexing exactly. It reads and
// writes the bytes a rule with STATES state buffers must move (params read and written, grads
// read, each state read and written) with one add per written value, so that no load or store
// can be optimised away, and no update arithmetic. The host sets the L2 coefficient to 0.

override STATES: u32 = 0u;

struct Scalars {
    unused: f32,
}

@group(0) @binding(3) var<storage, read_write> state0: array<f32>;
@group(0) @binding(4) var<storage, read_write> state1: array<f32>;
@group(0) @binding(5) var<storage, read_write> state2: array<f32>;

fn update(i: u32, p: f32, g: f32) -> f32 {
    if STATES > 0u {
        state0[i] = state0[i] + p;
    }
    if STATES > 1u {
        state1[i] = state1[i] + p;
    }
    if STATES > 2u {
        state2[i] = state2[i] + p;
    }
    return p + g;
}
