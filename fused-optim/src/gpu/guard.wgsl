// The grad guard's two kernels (src/guard.rs says what a guard does; `CpuGuard` there is their
// CPU twin, performing these f32 operations in this order):
// - `reduce`, one dispatch per window of the grads: each invocation sums 256 elements into
//   one partial, a scaled sum of squares (`Partial` below), the largest magnitude and the
//   largest bit pattern of a magnitude (inf and NaN), in runs of 16 elements, each run scaled
//   by a power of two from its own largest magnitude;
// - `finalize`, one workgroup: merges every partial in a fixed order, writes the step's
//   found-inf, total norm, clipping coefficient and skip flag into the status, and advances
//   the scaler and the step count. The update kernels of the step then read the status
//   (src/gpu/glue.rs: `guard_grad`, `guard_live`, `scalars`).
// Declared by the host ahead of this file: the codecs (codec.wgsl), `fn grad4(v: u32) ->
// vec4<f32>`, the window's grads `4v..4v + 4`, read as one vector from the binding of its
// whole vectors, and `fn grad_at(e: u32) -> f32`, grad `e`, read alone from the binding of all
// of them (src/gpu/guard.rs).

override WORKGROUP_SIZE: u32 = 256u;

// Layout of `GradStatus` in src/guard.rs.
struct GuardStatus {
    scale: f32,
    growth_tracker: u32,
    applied: u32,
    skipped: u32,
    found_inf: u32,
    total_norm: f32,
    inv_scale: f32,
    clip_coef: f32,
    t: u32,
    skip: u32,
    pad0: u32,
    pad1: u32,
}

// The head of the step's guard values (`GuardHeader` in src/gpu/guard.rs), staged by each
// step: the settings in force and the row range of the rule's scalars.
struct GuardHeader {
    lo: u32,
    rows: u32,
    groups: u32,
    partials: u32,
    flags: u32,
    max_norm: f32,
    clip_value: f32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    // u32 words of the rule's `Scalars`, and between two groups' rows of `resolved`.
    scalar_words: u32,
    resolved_stride: u32,
}

// The staged values: the header, then the rule's scalars, `rows` step counts from `lo` of
// `groups` groups each, as words.
struct GuardValues {
    header: GuardHeader,
    rows: array<u32>,
}

const SCALER: u32 = 1u;
const CLIP_NORM: u32 = 2u;
const NORM_INF: u32 = 4u;

// A sum of squares that no finite grads overflow or flush: `sum * 4^(exponent - 127)`,
// with the largest finite magnitude `max` and the largest magnitude's bits `worst` (an inf
// is 0x7f800000, a NaN above). Merging two takes the larger exponent and scales the other
// sum down by a power of two, exactly; `Partial` in src/guard.rs.
struct Partial {
    sum: f32,
    exponent: u32,
    max: f32,
    worst: u32,
}

// Where this dispatch's window starts among the partials, and its elements.
struct ReduceWindow {
    partial_base: u32,
    len: u32,
}

@group(0) @binding(0) var<uniform> reduce_window: ReduceWindow;
@group(0) @binding(2) var<storage, read_write> status: GuardStatus;
@group(0) @binding(3) var<storage, read> values: GuardValues;
@group(0) @binding(4) var<storage, read_write> partials: array<Partial>;
// What the update kernels read, copied into a uniform between the passes (src/gpu/guard.rs
// `Resolved`): at word 0 the step's inv_scale, clip_coef, clip_value, skip and t; at word
// `resolved_stride * (g + 1)` group g's scalars for the step's count.
@group(0) @binding(5) var<storage, read_write> resolved: array<u32>;

// Where `combine` writes a shard's partial, for the caller's collective (src/gpu/guard.rs).
@group(0) @binding(7) var<storage, read_write> shard_partial: array<Partial>;

var<workgroup> scratch: array<Partial, 256>;
var<workgroup> folded: array<Partial, 16>;

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn empty() -> Partial {
    return Partial(0.0, 1u, 0.0, 0u);
}

// `sum * 4^(own - to)` for `own <= to`: exact, or 0 where it is below 2^-120 of the sum it
// joins, far below an f32's precision.
fn shrink(sum: f32, own: u32, to: u32) -> f32 {
    let d = to - own;
    return select(0.0, sum * bitcast<f32>((127u - 2u * d) << 23u), d <= 60u);
}

fn merge(p: Partial, q: Partial) -> Partial {
    let exponent = max(p.exponent, q.exponent);
    let sum = shrink(p.sum, p.exponent, exponent) + shrink(q.sum, q.exponent, exponent);
    return Partial(sum, exponent, max(p.max, q.max), max(p.worst, q.worst));
}

// The partial of a run of 16 grads, four per vector: flags from the unscaled values `x`, the
// norm from the value-clipped ones within `bound`. The run's squares are scaled by 4^(127 - e),
// e the exponent field of its largest magnitude (within 1..=253), so each is below 16.
fn run_partial(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, bound: f32) -> Partial {
    let b0 = bitcast<vec4<u32>>(x0) & vec4<u32>(0x7fffffffu);
    let b1 = bitcast<vec4<u32>>(x1) & vec4<u32>(0x7fffffffu);
    let b2 = bitcast<vec4<u32>>(x2) & vec4<u32>(0x7fffffffu);
    let b3 = bitcast<vec4<u32>>(x3) & vec4<u32>(0x7fffffffu);
    let inf = vec4<u32>(0x7f800000u);
    let a0 = select(vec4<f32>(0.0), abs(clamp(x0, vec4<f32>(-bound), vec4<f32>(bound))), b0 < inf);
    let a1 = select(vec4<f32>(0.0), abs(clamp(x1, vec4<f32>(-bound), vec4<f32>(bound))), b1 < inf);
    let a2 = select(vec4<f32>(0.0), abs(clamp(x2, vec4<f32>(-bound), vec4<f32>(bound))), b2 < inf);
    let a3 = select(vec4<f32>(0.0), abs(clamp(x3, vec4<f32>(-bound), vec4<f32>(bound))), b3 < inf);
    let w = max(max(b0, b1), max(b2, b3));
    let m4 = max(max(a0, a1), max(a2, a3));
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    let e = clamp(bitcast<u32>(m) >> 23u, 1u, 253u);
    let s = vec4<f32>(bitcast<f32>((254u - e) << 23u));
    let y0 = a0 * s;
    let y1 = a1 * s;
    let y2 = a2 * s;
    let y3 = a3 * s;
    let t = y0 * y0 + y1 * y1 + y2 * y2 + y3 * y3;
    let sum = (t.x + t.y) + (t.z + t.w);
    return Partial(sum, e, m, max(max(w.x, w.y), max(w.z, w.w)));
}

// Folds `finalize`'s 256 partials, each invocation's in `scratch[local]`, into one, which
// invocation 0 returns: sixteen invocations each merge sixteen in order, then the first
// merges those sixteen.
fn fold(local: u32) -> Partial {
    workgroupBarrier();
    if local < 16u {
        var sum = empty();
        for (var k = 0u; k < 16u; k++) {
            sum = merge(sum, scratch[local * 16u + k]);
        }
        folded[local] = sum;
    }
    workgroupBarrier();
    var sum = empty();
    if local == 0u {
        for (var k = 0u; k < 16u; k++) {
            sum = merge(sum, folded[k]);
        }
    }
    return sum;
}

// How `reduce` walks its window (src/guard.rs, REDUCTION_CHUNK): workgroup `c` takes chunk
// `c` of 65536 elements, invocation `l` of it takes the 16 consecutive elements from
// `16 * (l + 256 * r)` as run `r` (four vector loads), and merges its 16 runs into its
// partial, with no workgroup memory and no barrier (a CPU adapter pays for those with a
// coroutine per invocation). Neighbouring invocations read neighbouring runs.
const LANES: u32 = 256u;
const RUN: u32 = 16u;
const CHUNK: u32 = 65536u;

// The grads `e..e + 4` times `inv_scale`, one by one; 0 past `len`.
fn four(e: u32, len: u32, inv_scale: f32) -> vec4<f32> {
    let x = vec4<f32>(
        grad_at(min(e, len - 1u)),
        grad_at(min(e + 1u, len - 1u)),
        grad_at(min(e + 2u, len - 1u)),
        grad_at(min(e + 3u, len - 1u)),
    ) * inv_scale;
    return select(vec4<f32>(0.0), x, vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(len));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let chunk = workgroup.y * workgroups.x + workgroup.x;
    if chunk * CHUNK >= reduce_window.len {
        return;
    }
    let inv_scale = 1.0 / status.scale;
    let bound = values.header.clip_value;
    let len = reduce_window.len;
    var sum = empty();
    for (var r = 0u; r < RUN; r++) {
        let first = RUN * (chunk * (CHUNK / RUN) + local + r * LANES);
        if first + (RUN - 1u) < len {
            let v = first / 4u;
            sum = merge(sum, run_partial(grad4(v) * inv_scale, grad4(v + 1u) * inv_scale,
                grad4(v + 2u) * inv_scale, grad4(v + 3u) * inv_scale, bound));
        } else if first < len {
            // The run the window ends in; runs past it would add nothing.
            sum = merge(sum, run_partial(four(first, len, inv_scale),
                four(first + 4u, len, inv_scale), four(first + 8u, len, inv_scale),
                four(first + 12u, len, inv_scale), bound));
        }
    }
    partials[reduce_window.partial_base + chunk * LANES + local] = sum;
}

// WGSL makes a constant expression that is NaN or infinite a shader-creation error (Tint
// refuses `bitcast<f32>(0x7fc00000u)`; naga lets it pass): both are made from `total.worst`,
// a runtime value.
fn total_norm(total: Partial, inf_norm: bool) -> f32 {
    if total.worst > 0x7f800000u {
        return bitcast<f32>((total.worst & 0u) | 0x7fc00000u);
    }
    if total.worst == 0x7f800000u {
        return bitcast<f32>(total.worst);
    }
    if inf_norm {
        return total.max;
    }
    return sqrt(total.sum) * bitcast<f32>(total.exponent << 23u);
}

// The first `count` partials merged, which invocation 0 returns: invocation `l` merges
// partials `l`, `l + 256`, ... in order, then the workgroup folds.
fn merge_all(local: u32, count: u32) -> Partial {
    var sum = empty();
    for (var p = local; p < count; p += LANES) {
        sum = merge(sum, partials[p]);
    }
    scratch[local] = sum;
    return fold(local);
}

// A shard's half of a split guard: its partials merged into one, which the caller's
// collective gathers from every shard in rank order for `finalize`.
@compute @workgroup_size(WORKGROUP_SIZE)
fn combine(@builtin(local_invocation_index) local: u32) {
    let total = merge_all(local, values.header.partials);
    if local == 0u {
        shard_partial[0] = total;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(@builtin(local_invocation_index) local: u32) {
    let header = values.header;
    // Read before invocation 0 advances it, two barriers below.
    let t = status.applied + 1u;
    // The reduction's partials, or every shard's, gathered by the caller.
    let combined = merge_all(local, header.partials);
    // Every group's row of the step count the device holds, whether or not the step runs.
    let words = header.groups * header.scalar_words;
    // The host stages a row for every count the device may hold (DeviceGuard::candidates),
    // so the clamp never bites; it is defensive, keeping a read inside this step's rows.
    let first = min(t - 1u - header.lo, header.rows - 1u) * words;
    for (var w = local; w < words; w += LANES) {
        let group = w / header.scalar_words;
        resolved[header.resolved_stride * (group + 1u) + w % header.scalar_words] =
            values.rows[first + w];
    }
    if local != 0u {
        return;
    }
    let norm = total_norm(combined, (header.flags & NORM_INF) != 0u);
    var coef = 1.0;
    if (header.flags & CLIP_NORM) != 0u {
        // A NaN norm gives NaN grads, as clip_grad_norm_ does.
        let unclamped = header.max_norm / (norm + 1e-6);
        coef = select(min(unclamped, 1.0), unclamped, is_nan(unclamped));
    }
    let found_inf = combined.worst >= 0x7f800000u;
    let scaler = (header.flags & SCALER) != 0u;
    let skip = found_inf && scaler;
    status.found_inf = u32(found_inf);
    status.total_norm = norm;
    status.inv_scale = 1.0 / status.scale;
    status.clip_coef = coef;
    status.t = status.applied + 1u;
    status.skip = u32(skip);
    if scaler {
        if found_inf {
            status.scale = status.scale * header.backoff_factor;
            status.growth_tracker = 0u;
            status.skipped = status.skipped + 1u;
        } else if status.growth_tracker + 1u >= header.growth_interval {
            // At least, not equal: an interval shortened mid-run still grows the scale.
            let grown = status.scale * header.growth_factor;
            if is_finite(grown) {
                status.scale = grown;
            }
            status.growth_tracker = 0u;
        } else {
            status.growth_tracker = status.growth_tracker + 1u;
        }
    }
    if !skip {
        status.applied = status.applied + 1u;
    }
    resolved[0] = bitcast<u32>(status.inv_scale);
    resolved[1] = bitcast<u32>(coef);
    resolved[2] = bitcast<u32>(header.clip_value);
    resolved[3] = u32(skip);
    resolved[4] = t;
}
