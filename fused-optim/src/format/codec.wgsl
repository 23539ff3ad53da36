// The 16-bit storage formats' codecs, shared by every kernel: conversions between f32 and bf16,
// f16 and the bf16 remainder master, and the counter-based random bits of stochastic rounding,
// all in integer arithmetic or exact f32 operations so that every GPU computes the same bits
// as the CPU twin (codec.rs beside this file, function for function; the block codes are
// block.wgsl with its twin block.rs). A 16-bit value travels in the low 16 bits of a u32. The accessors that bind these to a kernel's buffers are
// generated per format by src/gpu/glue.rs.

fn bf16_value(bits: u32) -> f32 {
    if (bits & 0x7fffu) > 0x7f80u {
        return bitcast<f32>((bits | 0x40u) << 16u);
    }
    return bitcast<f32>(bits << 16u);
}

// Nearest, ties to even; a NaN stays a (quiet) NaN.
fn bf16_nearest(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// Up with probability (dropped bits) / 2^16, from the low 16 bits of `random`.
fn bf16_stochastic(x: f32, random: u32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    return (b + (random & 0xffffu)) >> 16u;
}

fn f16_value(bits: u32) -> f32 {
    let sign = (bits & 0x8000u) << 16u;
    let e = (bits >> 10u) & 0x1fu;
    let m = bits & 0x3ffu;
    if e == 0u {
        // Zero or subnormal: m * 2^-24, exact.
        return bitcast<f32>(sign | bitcast<u32>(f32(m) * bitcast<f32>(0x33800000u)));
    }
    if e == 31u {
        if m == 0u {
            return bitcast<f32>(sign | 0x7f800000u);
        }
        return bitcast<f32>(sign | 0x7fc00000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// f16 bits of `x`: nearest, ties to even, or (`stochastic`) up with probability equal to the
// dropped fraction of an ulp, from the low bits of `random`. Subnormals included; below 2^-39
// a signed zero.
fn f16_round(x: f32, random: u32, stochastic: bool) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let exponent = (b >> 23u) & 0xffu;
    let mantissa = b & 0x7fffffu;
    if exponent == 0xffu {
        if mantissa != 0u {
            return sign | 0x7e00u | (mantissa >> 13u);
        }
        return sign | 0x7c00u;
    }
    let e = i32(exponent) - 127;
    if e >= 16 {
        return sign | 0x7c00u;
    }
    var shift = 13u;
    if e < -14 {
        shift = u32(-1 - e);
    }
    if exponent == 0u || shift > 31u {
        return sign;
    }
    let full = mantissa | 0x800000u;
    let kept = full >> shift;
    let mask = (1u << shift) - 1u;
    let dropped = full & mask;
    var up = 0u;
    if stochastic {
        up = select(0u, 1u, dropped > (random & mask));
    } else {
        let half = 1u << (shift - 1u);
        up = select(0u, 1u, dropped > half || (dropped == half && (kept & 1u) == 1u));
    }
    var magnitude = kept + up;
    if e >= -14 {
        magnitude = magnitude + (u32(e + 14) << 10u);
    }
    return sign | min(magnitude, 0x7c00u);
}

fn lowbias32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    return x ^ (x >> 16u);
}

// Counter-based random bits of element `index` at step `step` (no random state).
fn random_bits(index: u32, step: u32) -> u32 {
    return lowbias32(index ^ lowbias32(step * 0x9e3779b9u));
}

// The bf16 param (low 16 bits) and remainder (high 16 bits) of an f32 master.
fn split_remainder(master: f32) -> vec2<u32> {
    var b = bitcast<u32>(master);
    if (b & 0x7fffffffu) > 0x7f800000u {
        b = 0x7fc00000u;
    }
    return vec2<u32>((b + 0x8000u) >> 16u, b & 0xffffu);
}

fn join_remainder(param: u32, remainder: u32) -> f32 {
    let high = (param - (remainder >> 15u)) & 0xffffu;
    return bitcast<f32>((high << 16u) | remainder);
}
