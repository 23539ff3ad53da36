// Prelude prepended to every update rule by `kernel::shader_source` (src/kernel.rs). It holds
// what every torch.optim rule does alike: pick the element, negate the gradient when
// maximizing, add the L2 weight-decay term; then it calls the rule's
// `fn update(i: u32, p: f32, g: f32) -> f32`, which returns the new parameter.
// `kernel::twin_element` (src/kernel.rs), called by `CpuOptimizer::step`, is this file's CPU
// twin.
//
// Invariants shared with src/kernel.rs:
// - binding 0 is `Step`: the 16-byte header (`StepHeader`) then the rule's own `Scalars`,
//   field for field the rule's `#[repr(C)]` Scalars in src/<rule>.rs.
// - binding 1 is the params, binding 2 the grads, bindings 3.. the rule's state buffers in
//   the order of its `STATE_SLOTS`.
// - each dispatch updates one window: the buffers are bound from an aligned element offset,
//   and the window's elements are indices `begin..end` of those bindings (`begin` is below
//   the offset alignment; src/plan.rs cuts the windows). The host dispatches
//   ceil((end - begin) / WORKGROUP_SIZE) workgroups, folded into an x*y grid when that exceeds
//   the per-dimension limit; `main` unfolds it.

override WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;

struct Step {
    begin: u32,
    end: u32,
    // L2 coefficient added to the gradient (0 for decoupled weight decay).
    weight_decay: f32,
    _pad: u32,
    s: Scalars,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;

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
    param[i] = update(i, p, g + step.weight_decay * p);
}
