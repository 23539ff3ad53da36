// One elementwise tensor operation per dispatch: the unfused chain the benchmark compares each
// fused rule against (src/unfused.rs), the way a tensor framework without fusion runs an
// optimizer step (one kernel per mul, add, sqrt, ...). `OP` picks the operation; its numbers
// are `Elementwise`'s discriminants in src/unfused.rs. It is assembled like a rule
// (`kernel::shader_source` declares `V` and `step` ahead of it) and follows
// shaders/common.wgsl's bindings and windowing (values, then the read-write operand, then the
// read one), so it moves 16-byte vectors too and the host dispatches it like a rule with no
// state. It does not reuse the prelude, whose entry point reads both operands of every
// element: a framework's copy or in-place scale reads one tensor, and the baseline should
// move no more bytes than the framework would.

override WORKGROUP_SIZE: u32 = 256u;
override OP: u32 = 0u;

struct Step {
    begin: u32,
    end: u32,
    scalar: f32,
    _pad: u32,
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
    let s = step.scalar;
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
        default: {}
    }
}
