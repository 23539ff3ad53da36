//! The CPU twins of the WGSL codecs in `src/format/codec.wgsl`: every conversion between f32 and a
//! storage format, in integer arithmetic where rounding is involved, so that a GPU and its twin
//! agree bit for bit. Round-to-nearest-even conversions are the `half` crate's; stochastic
//! rounding and the bf16 remainder split are this crate's own (the 8-bit code's twin is
//! [`super::q8`]).

use half::{bf16, f16};

/// The bits of the bf16 nearest to `x`, ties to even (a NaN stays a NaN).
pub fn bf16_nearest(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

/// The bits of the f16 nearest to `x`, ties to even; past f16's range, infinity.
pub fn f16_nearest(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// The f32 value of bf16 bits (exact).
pub fn bf16_value(bits: u16) -> f32 {
    bf16::from_bits(bits).to_f32()
}

/// The f32 value of f16 bits (exact, subnormals included).
pub fn f16_value(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Counter-based random bits for element `index` at step `step`: the same on the GPU
/// (`random_bits` in codec.wgsl) and here, so stochastic rounding needs no random state.
/// Two rounds of the `lowbias32` integer hash (C. Wellons), the step's hash xored into the
/// element's index.
pub fn random_bits(index: u32, step: u32) -> u32 {
    lowbias32(index ^ lowbias32(step.wrapping_mul(0x9e37_79b9)))
}

/// The `lowbias32` integer hash (C. Wellons): `lowbias32` in codec.wgsl.
pub(crate) fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// bf16 bits of `x` rounded stochastically: up (away from zero) with probability equal to
/// the fraction of a bf16 ulp that truncation drops, using the low 16 of `random` bits. A NaN
/// becomes the bf16 NaN the nearest rounding gives.
pub fn bf16_stochastic(x: f32, random: u32) -> u16 {
    if x.is_nan() {
        return bf16_nearest(x);
    }
    (x.to_bits().wrapping_add(random & 0xffff) >> 16) as u16
}

/// f16 bits of `x` rounded stochastically, f16 subnormals included: up (away from zero) with
/// probability equal to the fraction of an f16 ulp that truncation drops, from the low bits of
/// `random`. Infinities and NaNs convert as with nearest rounding; finite values past f16's
/// largest round to infinity only as nearest rounding would, and those below 2^-39 (far below
/// the smallest f16 subnormal, 2^-24) become a signed zero.
pub fn f16_stochastic(x: f32, random: u32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    if exponent == 0xff || exponent - 127 >= 16 {
        return f16_nearest(x);
    }
    let e = exponent - 127;
    let mantissa = (bits & 0x7f_ffff) | 0x80_0000;
    // Bits of the 24-bit mantissa that f16 drops: 13 for normals, more below 2^-14.
    let shift = if e >= -14 { 13 } else { (-1 - e) as u32 };
    if exponent == 0 || shift > 31 {
        return sign;
    }
    let kept = mantissa >> shift;
    let dropped = mantissa & ((1u32 << shift) - 1);
    let up = (dropped > (random & ((1u32 << shift) - 1))) as u32;
    let magnitude = if e >= -14 {
        (((e + 14) as u32) << 10) + kept + up
    } else {
        kept + up
    };
    sign | magnitude.min(0x7c00) as u16
}

/// Splits an f32 master weight into the bf16 the forward pass sees and the 16-bit remainder
/// that, with it, gives back the master exactly ([`join_remainder`]). The bf16 is the master
/// rounded to nearest with ties away from zero: the one rounding that pairs every f32 with
/// exactly one (bf16, remainder), because every bf16 then covers exactly 2^16 f32 bit
/// patterns. It differs from ties-to-even only on exact ties. A NaN master is stored as the
/// quiet NaN 0x7fc00000.
pub fn split_remainder(master: f32) -> (u16, u16) {
    let bits = if master.is_nan() {
        0x7fc0_0000
    } else {
        master.to_bits()
    };
    (((bits + 0x8000) >> 16) as u16, bits as u16)
}

/// The f32 master a bf16 param and its remainder stand for: the bf16's bits, less one where
/// the split rounded up (the remainder's top bit), then the remainder as the low 16 bits.
pub fn join_remainder(param: u16, remainder: u16) -> f32 {
    let high = param.wrapping_sub(remainder >> 15);
    f32::from_bits(((high as u32) << 16) | remainder as u32)
}
