// The grad guard's two kernels (src/guard.rs says what a guard does; `CpuGuard` there is their
// CPU twin, performing these f32 operations in this order):
// - `reduce`, one dispatch per window of the grads: each invocation sums 256 elements into
//   one partial (three scaled sums of squares, the largest magnitude, inf/NaN flags) in runs
//   of 16 additions, so that rounding stays within a few dozen ulp of the exact sum;
// - `finalize`, one workgroup: combines every partial in a fixed order, writes the step's
//   found-inf, total norm, clipping coefficient and skip flag into the status, and advances
//   the scaler and the step count. The update kernels of the step then read the status
//   (src/gpu/glue.rs: `guard_grad`, `guard_live`, `scalars`).
// Declared by the host ahead of this file: the codecs (codec.wgsl) and `fn grad_at(e: u32) ->
// f32`, element `e` of the bound grads in their format (src/gpu/guard.rs).

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

struct Partial {
    big: f32,
    medium: f32,
    small: f32,
    max: f32,
    flags: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// Blue's thresholds and scales, powers of two (src/guard.rs).
const BIG: f32 = 4294967296.0;
const SMALL: f32 = 9.094947e-13;
const DOWN: f32 = 8.271806e-25;
const UP: f32 = 1.2089258e24;

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

var<workgroup> scratch: array<Partial, 256>;
var<workgroup> folded: array<Partial, 16>;

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The partial of grad `g` added to `sum`, without branches: flags from the unscaled value,
// the norm from the value-clipped one; a non-finite value adds only its flag.
fn accumulate_grad(sum: ptr<function, Partial>, g: f32, inv_scale: f32, bound: f32) {
    let x = g * inv_scale;
    let finite = is_finite(x);
    let a = select(0.0, abs(max(min(x, bound), -bound)), finite);
    let big = a * DOWN;
    let small = a * UP;
    (*sum).big = (*sum).big + select(0.0, big * big, a > BIG);
    (*sum).medium = (*sum).medium + select(0.0, a * a, a >= SMALL && a <= BIG);
    (*sum).small = (*sum).small + select(0.0, small * small, a < SMALL);
    (*sum).max = max((*sum).max, a);
    (*sum).flags = (*sum).flags | select(select(1u, 2u, is_nan(x)), 0u, finite);
}

// Sums of the three fields in order, the largest magnitude and the flags, as `sum_in_order`
// in src/guard.rs. Plain sums: compensated (Kahan) sums are what a driver's algebraic
// optimizer removes (Mesa turns `(s + y) - s - y` into 0), so they would not stay the twin's.
fn empty() -> Partial {
    return Partial(0.0, 0.0, 0.0, 0.0, 0u, 0u, 0u, 0u);
}

fn accumulate(sum: ptr<function, Partial>, p: Partial) {
    (*sum).big = (*sum).big + p.big;
    (*sum).medium = (*sum).medium + p.medium;
    (*sum).small = (*sum).small + p.small;
    (*sum).max = max((*sum).max, p.max);
    (*sum).flags = (*sum).flags | p.flags;
}

// Folds `finalize`'s 256 sums, each invocation's in `scratch[local]`, into one, which
// invocation 0 returns: sixteen invocations each sum sixteen in order, then the first sums
// those sixteen.
fn fold(local: u32) -> Partial {
    workgroupBarrier();
    if local < 16u {
        var sum = empty();
        for (var k = 0u; k < 16u; k++) {
            accumulate(&sum, scratch[local * 16u + k]);
        }
        folded[local] = sum;
    }
    workgroupBarrier();
    var sum = empty();
    if local == 0u {
        for (var k = 0u; k < 16u; k++) {
            accumulate(&sum, folded[k]);
        }
    }
    return sum;
}

// How `reduce` walks its window (src/guard.rs, REDUCTION_CHUNK): workgroup `c` takes chunk
// `c` of 65536 elements, invocation `l` of it sums elements `l + 256 * (16 * r + k)` for
// k in 0..16 into run `r`, and its 16 runs into its partial, with no workgroup memory and no
// barrier (a CPU adapter pays for those with a coroutine per invocation).
const LANES: u32 = 256u;
const RUN: u32 = 16u;
const CHUNK: u32 = 65536u;

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
        var run = empty();
        let start = chunk * CHUNK + r * RUN * LANES + local;
        if start + (RUN - 1u) * LANES < len {
            for (var k = 0u; k < RUN; k++) {
                accumulate_grad(&run, grad_at(start + k * LANES), inv_scale, bound);
            }
        } else {
            for (var k = 0u; k < RUN; k++) {
                if start + k * LANES < len {
                    accumulate_grad(&run, grad_at(start + k * LANES), inv_scale, bound);
                }
            }
        }
        accumulate(&sum, run);
    }
    partials[reduce_window.partial_base + chunk * LANES + local] = sum;
}

fn total_norm(total: Partial, inf_norm: bool) -> f32 {
    if (total.flags & 2u) != 0u {
        return bitcast<f32>(0x7fc00000u);
    }
    if (total.flags & 1u) != 0u {
        return bitcast<f32>(0x7f800000u);
    }
    if inf_norm {
        return total.max;
    }
    if total.big > 0.0 {
        return sqrt(total.big + (total.medium * DOWN) * DOWN) * UP;
    }
    if total.medium > 0.0 {
        return sqrt(total.medium + (total.small * DOWN) * DOWN);
    }
    return sqrt(total.small) * DOWN;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(@builtin(local_invocation_index) local: u32) {
    // Invocation `l` sums partials `l`, `l + 256`, ... in runs of 16, then the workgroup folds.
    let header = values.header;
    // Read before invocation 0 advances it, two barriers below.
    let t = status.applied + 1u;
    var sum = empty();
    for (var p = local; p < header.partials; p += RUN * LANES) {
        var run = empty();
        for (var k = 0u; k < RUN; k++) {
            if p + k * LANES < header.partials {
                accumulate(&run, partials[p + k * LANES]);
            }
        }
        accumulate(&sum, run);
    }
    scratch[local] = sum;
    let combined = fold(local);
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
    let found_inf = combined.flags != 0u;
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
