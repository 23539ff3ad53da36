// Prelude prepended to every update rule by `kernel::shader_source` (src/kernel.rs).
//
// Invariants shared with src/kernel.rs:
// - binding 0 is `StepHeader` (16 bytes, `n` then padding) followed by the rule's own
//   `Scalars` struct, whose fields match the rule's `#[repr(C)]` Scalars in src/<rule>.rs
//   field for field; the host writes both with one `queue.write_buffer` per step.
// - binding 1 is the params, binding 2 the grads, bindings 3.. the rule's state buffers
//   in the order of its `STATE_SLOTS`.
// - the host dispatches ceil(n / WORKGROUP_SIZE) workgroups, folded into an x*y grid when
//   that exceeds the per-dimension limit; `element_index` unfolds it.

override WORKGROUP_SIZE: u32 = 256u;

struct Step {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    s: Scalars,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;

fn element_index(workgroup: vec3<u32>, workgroups: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP_SIZE + local;
}
