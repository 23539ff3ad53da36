// Prelude of every update rule, put ahead of the rule's own file by `kernel::shader_source`
// (src/gpu/kernel.rs). It holds what every torch.optim rule does alike: pick the element, negate
// the gradient when maximizing, add the L2 weight-decay term; then it calls the rule's
// `fn update(i: u32, p: V, g: V) -> V`, which returns the new parameter.
// `rule::twin_element` (src/rule/mod.rs), called by `CpuOptimizer::step`, is this file's CPU
// twin.
//
// Invariants shared with src/gpu/kernel.rs and src/gpu/glue.rs:
// - the host declares, ahead of this file:
//   - `alias V`: `vec4<f32>` for the body of a window, where an item holds 4 elements, or
//     `f32` for a window's tail, one element per item (the 1 to 3 elements past its last whole
//     vec4, or with 8-bit state the 1 to 31 past its last whole block); `VU`, `VI`, `VB`, the
//     u32, i32 and bool of the same width, and `lanes_max`. Every operation of every rule is
//     elementwise, so each lane of the vector kernel performs exactly the f32 operations of
//     the scalar kernel and of the CPU twin.
//   - `step`, the values of one dispatch: immediates (`var<immediate>`) where the adapter has
//     them, else binding 0, a uniform read at a dynamic offset.
//   - the codecs (codec.wgsl) and, generated for the kernel's storage formats (glue.rs), the
//     bindings, `ITEMS` (the items each invocation updates, in order), `item_k` (which of
//     them is being updated), `load_param`,
//     `load_grad`, `load_<slot>`/`store_<slot>` for each state slot, `finish` (an item's
//     stores) and `begin_items`/`end_items` (what an invocation reads before its items and
//     writes after them: the 8-bit blocks); and the grad guard's hooks (glue.rs, src/guard.rs): `guard_live` (false
//     on a skipped step), `guard_grad` (unscale and clip), `scalars()` (the rule's scalars for
//     the step count) and `seed()`, which without a guard pass through or read `step`. Every value reaches the rule as f32 and leaves it as f32: a rule never
//     knows how its param, grad or state is stored.
// - `Step` is the 32-byte header (`StepHeader`) then the rule's own `Scalars`, which the host
//   declares from the rule's `declare_scalars!` in src/rules/<rule>.rs (a rule's file uses it
//   and does not declare it).
// - each dispatch updates one window: the buffers are bound from an aligned offset, and the
//   dispatch updates items `begin..end` of those bindings, counted in `V`s (src/gpu/plan.rs
//   cuts the windows and their dispatches). The host dispatches ceil((end - begin) /
//   (WORKGROUP_SIZE * ITEMS)) workgroups, folded into an x*y grid when that exceeds the
//   per-dimension limit; `main` unfolds it. No invocation waits for another: nothing is
//   shared through workgroup memory.

override WORKGROUP_SIZE: u32 = 256u;
override MAXIMIZE: bool = false;
// Whether the rule adds an L2 term (a non-zero weight decay that is not decoupled).
override WEIGHT_DECAY: bool = false;

struct Step {
    begin: u32,
    end: u32,
    // L2 coefficient added to the gradient (0 for decoupled weight decay).
    weight_decay: f32,
    // Index in its span (a tensor, or a group's run of a parameter set) of the binding's
    // first element, and the step count: what stochastic rounding hashes.
    origin: u32,
    seed: u32,
    // The parameter group, whose row of scalars a guarded kernel reads.
    group: u32,
    _pad1: u32,
    _pad2: u32,
    s: Scalars,
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let invocation = (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP_SIZE + local;
    let first = step.begin + invocation * ITEMS;
    if first >= step.end {
        return;
    }
    begin_items(first);
    for (var k = 0u; k < ITEMS; k++) {
        item_k = k;
        item(first + k);
    }
    end_items(first);
}

fn item(i: u32) {
    if guard_live(i < step.end) {
        let p = load_param(i);
        var g = guard_grad(load_grad(i));
        if MAXIMIZE {
            g = -g;
        }
        if WEIGHT_DECAY {
            g = g + step.weight_decay * p;
        }
        finish(i, update(i, p, g));
    }
}
