// Prelude of every update rule, put ahead of the rule's own file by `kernel::shader_source`
// (src/kernel.rs). It holds what every torch.optim rule does alike: pick the element, negate
// the gradient when maximizing, add the L2 weight-decay term; then it calls the rule's
// `fn update(i: u32, p: V, g: V) -> V`, which returns the new parameter.
// `kernel::twin_element` (src/kernel.rs), called by `CpuOptimizer::step`, is this file's CPU
// twin.
//
// Invariants shared with src/kernel.rs:
// - `kernel::shader_source` declares two things ahead of this file:
//   - `alias V`: `vec4<f32>` for the body of a window, where every load and store moves a
//     16-byte vector, or `f32` for the 1 to 3 elements past its last whole vec4 (the tail
//     dispatch). Every operation of every rule is elementwise, so each lane of the vector
//     kernel performs exactly the f32 operations of the scalar kernel and of the CPU twin.
//   - `step`, the values of one dispatch: immediates (`var<immediate>`) where the adapter has
//     them, else binding 0, a uniform read at a dynamic offset.
// - `Step` is the 16-byte header (`StepHeader`) then the rule's own `Scalars`, field for field
//   the rule's `#[repr(C)]` Scalars in src/<rule>.rs.
// - binding 1 is the params, binding 2 the grads, bindings 3.. the rule's state buffers in
//   the order of its `STATE_SLOTS`, all as arrays of `V`.
// - each dispatch updates one window: the buffers are bound from an aligned offset, and the
//   dispatch updates items `begin..end` of those bindings, counted in `V`s (src/plan.rs cuts
//   the windows and their dispatches). The host dispatches ceil((end - begin) /
//   WORKGROUP_SIZE) workgroups, folded into an x*y grid when that exceeds the per-dimension
//   limit; `main` unfolds it.

override WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
// Whether the rule adds an L2 term (a non-zero weight decay that is not decoupled).
override WEIGHT_DECAY: bool = false;

struct Step {
    begin: u32,
    end: u32,
    // L2 coefficient added to the gradient (0 for decoupled weight decay).
    weight_decay: f32,
    _pad: u32,
    s: Scalars,
}

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = step.begin + (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP_SIZE + local;
    if i >= step.end {
        return;
    }
    let p = param[i];
    var g = grad[i];
    if MAXIMIZE {
        g = -g;
    }
    if WEIGHT_DECAY {
        g = g + step.weight_decay * p;
    }
    param[i] = update(i, p, g);
}
