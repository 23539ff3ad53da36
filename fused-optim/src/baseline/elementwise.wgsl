// One elementwise tensor operation per dispatch: the unfused chain the benchmark compares each
// fused rule against (unfused.rs), the way a tensor framework without fusion runs an optimizer
// step (one kernel per mul, add, sqrt, ...). `OP` picks the operation; its numbers are
// `Elementwise`'s discriminants in src/rule/program.rs. The host declares `V`, `Scalars` and
// `step` ahead of it as for a rule, and it keeps the prelude's bindings, `Step` layout and windowing (values,
// then the read-write operand at binding 1, the read one at binding 2), so the engine
// dispatches it like a rule with no state and it moves 16-byte vectors too. It brings its own
// entry point (`StepKernel::OWN_ENTRY_POINT`) because the prelude's reads both operands of
// every element: a framework's copy or in-place scale reads one tensor, and the baseline
// should move no more bytes than the framework would.

override WORKGROUP_SIZE: u32 = 256u;
override OP: u32 = 0u;

// The prelude's `Step`: the 32-byte header (only begin and end used here), then the scalars.
struct Step {
    begin: u32,
    end: u32,
    _weight_decay: f32,
    _origin: u32,
    _seed: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    s: Scalars,
}

@group(0) @binding(1) var<storage, read_write> dst: array<V>;
@group(0) @binding(2) var<storage, read> src: array<V>;

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
    let s = step.s.scalar;
    switch OP {
        case 0u: { dst[i] = dst[i] + src[i]; }
        case 1u: { dst[i] = dst[i] - src[i]; }
        case 2u: { dst[i] = dst[i] * src[i]; }
        case 3u: { dst[i] = dst[i] / src[i]; }
        case 4u: { dst[i] = max(dst[i], src[i]); }
        case 5u: { dst[i] = dst[i] * s; }
        case 6u: { dst[i] = dst[i] / s; }
        case 7u: { dst[i] = dst[i] + s; }
        case 8u: { dst[i] = sqrt(dst[i]); }
        case 9u: { dst[i] = src[i]; }
        case 10u: { dst[i] = sqrt(src[i]); }
        case 11u: { dst[i] = src[i] * src[i]; }
        case 12u: { dst[i] = src[i] * s; }
        case 13u: { dst[i] = abs(src[i]); }
        case 14u: { dst[i] = sign(src[i]); }
        default: {}
    }
}
