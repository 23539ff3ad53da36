//! 8-bit block state ([`StateFormat::Block8`](super::StateFormat::Block8)): the CPU twin of
//! `q8.wgsl`, function for function. Table-free: a code is found and decoded in closed form,
//! with no map, search or workgroup memory.
//!
//! A block is [`BLOCK`] consecutive elements, all owned by one GPU invocation, so its scale is
//! a register reduction. The scale is the largest finite magnitude of the block rounded up to
//! a bf16 (two scales per `u32`); bf16 rather than f16 because second moments go far below
//! f16's range (a grad of 1e-6 has a square of 1e-12). Non-finite values take no part in the
//! scale and have codes of their own, so an inf or a NaN stays in its element.
//!
//! - **Signed** slots (`exp_avg`, `momentum_buffer`, ...): code `c` in -127..=127 (a byte,
//!   two's complement) stands for `sign(c) * (|c| / 127)^2 * scale`: square-root companding,
//!   finer near zero than a linear code. `0x80` is NaN (an infinity is stored as NaN).
//! - **Unsigned** slots (`exp_avg_sq`, `square_avg`, ...): code `c` in 0..=253 stands for
//!   `((c + 1) / 254)^4 * scale`: fourth-root companding, whose smallest value is
//!   `scale / 254^4` and never 0, so a non-zero second moment never decodes to 0 and an
//!   update is never `m / eps` by quantization. 254 is +inf, 255 NaN.
//!
//! Codes are rounded stochastically in the companded domain: up with probability equal to
//! the fraction of a code step, from a counter-based hash of the element's index, the step and
//! the slot ([`random`]). An exponential moving average changes by a fraction of a code step
//! per step (0.1% for `exp_avg_sq` with beta2 = 0.999, against a step of 1.6% near the top of
//! a block); rounded to nearest it would not move at all, rounded stochastically it moves by
//! that fraction on average.
//!
//! Decoding is multiplications only, each correctly rounded on every GPU API. Encoding takes
//! the companded position `u` (a reciprocal per block, then one or two square roots and a
//! product per element) and rounds it up where its fraction exceeds the random point: no
//! table, no search, no comparison against code values. Where f32 division and square roots
//! are correctly rounded, as on lavapipe, llvmpipe and CPUs, a GPU and its twin agree bit for
//! bit; elsewhere a value within an ulp of a code boundary may take the neighbouring code.

use super::codec::lowbias32;

/// Elements per block: one scale each.
pub const BLOCK: u64 = 32;

/// 1/127 rounded to f32: the signed code's step (`Q8_INV127` in q8.wgsl).
const INV127: f32 = f32::from_bits(0x3c01_0204);
/// 1/254 rounded to f32: the unsigned code's step (`Q8_INV254` in q8.wgsl).
const INV254: f32 = f32::from_bits(0x3b81_0204);
/// The signed code of NaN.
pub const SIGNED_NAN: u8 = 0x80;
/// The unsigned code of +inf.
pub const UNSIGNED_INF: u8 = 254;
/// The unsigned code of NaN.
pub const UNSIGNED_NAN: u8 = 255;

/// The bf16 bits of the scale of a block whose largest finite magnitude is `max`: rounded
/// up, so every finite value of the block is at most the scale, and at most bf16's largest
/// finite value.
pub fn scale_bits(max: f32) -> u16 {
    ((max.to_bits() + 0xffff) >> 16).min(0x7f7f) as u16
}

/// The value of bf16 scale bits.
pub fn scale_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The largest finite magnitude of `values`, 0 where none.
pub fn finite_max(values: &[f32]) -> f32 {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |max, v| max.max(v.abs()))
}

/// The random point in [0, 1) at which element `index`'s code rounds up at step `step` in
/// state slot `slot` (its index in the rule's slots): the top 24 bits of a multiplicative hash
/// of the index xored with a `lowbias32` hash of the step and slot, exact in f32. Consecutive
/// elements get well spread points; one element gets an unrelated one each step. `q8_random`
/// in q8.wgsl.
pub fn random(index: u32, step: u32, slot: u32) -> f32 {
    let stream = lowbias32(
        step.wrapping_mul(0x9e37_79b9)
            .wrapping_add(slot.wrapping_mul(0x632b_e5ab)),
    );
    let bits = (index ^ stream).wrapping_mul(0x9e37_79b9);
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The reciprocal of a block's scale, 0 for a zero scale: computed once per block.
pub fn reciprocal(scale: f32) -> f32 {
    if scale == 0.0 {
        0.0
    } else {
        1.0 / scale
    }
}

/// The code of companded position `u` (in code steps), rounded up past `random` and at most
/// `top`; a negative `u` takes code 0.
pub(crate) fn round(u: f32, top: f32, random: f32) -> f32 {
    let c = u.floor().clamp(0.0, top);
    if c < top && u - c > random {
        c + 1.0
    } else {
        c
    }
}

/// The code of `x` in a signed block of scale `scale`, rounding up past `random`.
pub fn signed_code(x: f32, scale: f32, random: f32) -> u8 {
    if !x.is_finite() {
        return SIGNED_NAN;
    }
    let u = 127.0 * (x.abs() * reciprocal(scale)).sqrt();
    let c = round(u, 127.0, random) as i8;
    if x < 0.0 {
        (-c) as u8
    } else {
        c as u8
    }
}

/// The value of signed code `code` in a block of scale `scale`.
pub fn signed_value(code: u8, scale: f32) -> f32 {
    if code == SIGNED_NAN {
        return f32::NAN;
    }
    let c = code as i8;
    let t = c.unsigned_abs() as f32 * INV127;
    let value = t * t * scale;
    if c < 0 {
        -value
    } else {
        value
    }
}

/// The code of `x` (its magnitude) in an unsigned block of scale `scale`, rounding up past
/// `random`; a value below the smallest code's takes that code.
pub fn unsigned_code(x: f32, scale: f32, random: f32) -> u8 {
    if x.is_nan() {
        return UNSIGNED_NAN;
    }
    if x.is_infinite() {
        return UNSIGNED_INF;
    }
    let u = 254.0 * (x.abs() * reciprocal(scale)).sqrt().sqrt();
    round(u - 1.0, 253.0, random) as u8
}

/// The value of unsigned code `code` in a block of scale `scale`.
pub fn unsigned_value(code: u8, scale: f32) -> f32 {
    match code {
        UNSIGNED_NAN => f32::NAN,
        UNSIGNED_INF => f32::INFINITY,
        _ => {
            let t = (code as f32 + 1.0) * INV254;
            let q = t * t;
            q * q * scale
        }
    }
}

/// The code of `x` in a block of scale `scale`, signed or unsigned, rounding up past
/// `random`.
pub fn code(x: f32, scale: f32, non_negative: bool, random: f32) -> u8 {
    match non_negative {
        true => unsigned_code(x, scale, random),
        false => signed_code(x, scale, random),
    }
}

/// The value of `code` in a block of scale `scale`, signed or unsigned.
pub fn value(code: u8, scale: f32, non_negative: bool) -> f32 {
    match non_negative {
        true => unsigned_value(code, scale),
        false => signed_value(code, scale),
    }
}

/// Each code's value in a block of scale 1 (non-finite codes: NaN or +inf), in code order:
/// what checkpoints carry so that other tools decode without this module. A value is
/// `table[code] * scale` for finite entries, the entry itself otherwise.
pub fn table(non_negative: bool) -> [f32; 256] {
    std::array::from_fn(|c| value(c as u8, 1.0, non_negative))
}

/// Where a block's codes draw their random points: the index of its first element, the step
/// and the slot (see [`random`]).
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Index of the block's first element in its span.
    pub first: u32,
    /// The step count.
    pub step: u32,
    /// The slot's index in the rule's slots.
    pub slot: u32,
}

/// Encodes one block: appends its codes to `codes` and returns its scale's bf16 bits.
pub fn encode_block(
    values: &[f32],
    non_negative: bool,
    stream: Stream,
    codes: &mut Vec<u8>,
) -> u16 {
    let bits = scale_bits(finite_max(values));
    let scale = scale_value(bits);
    codes.extend(values.iter().enumerate().map(|(k, &v)| {
        let index = stream.first.wrapping_add(k as u32);
        code(
            v,
            scale,
            non_negative,
            random(index, stream.step, stream.slot),
        )
    }));
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: Stream = Stream {
        first: 0,
        step: 1,
        slot: 0,
    };

    #[test]
    fn steps_are_the_nearest_f32() {
        assert_eq!(INV127, 1.0 / 127.0);
        assert_eq!(INV254, 1.0 / 254.0);
    }

    /// A code's value sits within an ulp of the code's position: it codes back to itself at
    /// a random point of 0.5, and to itself or a neighbour at the extremes.
    #[test]
    fn every_code_decodes_to_a_value_that_encodes_back_to_it() {
        for scale in [1.0f32, 3.5e-12, 0.75, 2.0e30] {
            let scale = scale_value(scale_bits(scale));
            for code in 0..=255u8 {
                for non_negative in [false, true] {
                    let value = value(code, scale, non_negative);
                    if (code == SIGNED_NAN && !non_negative) || value == 0.0 {
                        continue;
                    }
                    for random in [0.0, 0.5, 0.999_999_9] {
                        let back = self::code(value, scale, non_negative, random);
                        let apart = match non_negative {
                            true => back.abs_diff(code),
                            false => (back as i8).abs_diff(code as i8),
                        };
                        let allowed = if random == 0.5 { 0 } else { 1 };
                        assert!(
                            apart <= allowed,
                            "{code} ({non_negative}) at {scale:e}, {random}: {value:e} -> {back}"
                        );
                    }
                }
            }
        }
    }

    /// Rounding is to one of the two codes around the value, up with the probability of the
    /// fraction of a step in the companded domain.
    #[test]
    fn codes_round_to_a_neighbour_and_are_unbiased_in_the_companded_domain() {
        for k in 0..=2_000 {
            let x = k as f32 / 2_000.0;
            let exact_signed = 127.0 * (x as f64).sqrt();
            let exact_unsigned = 254.0 * (x as f64).sqrt().sqrt() - 1.0;
            let (mut signed, mut unsigned) = (0.0, 0.0);
            let draws = 256;
            for d in 0..draws {
                let r = random(d, 7, 1);
                let c = signed_code(x, 1.0, r) as f64;
                assert!(
                    c == exact_signed.floor() || c == exact_signed.ceil(),
                    "{x}: {c}"
                );
                assert_eq!(signed_code(-x, 1.0, r), (-(c as i8)) as u8);
                signed += c;
                let u = unsigned_code(x, 1.0, r) as f64;
                let e = exact_unsigned.max(0.0);
                assert!(u == e.floor() || u == e.ceil(), "{x}: {u} against {e}");
                unsigned += u;
            }
            assert!((signed / draws as f64 - exact_signed).abs() < 0.1, "{x}");
            if exact_unsigned > 0.0 {
                assert!(
                    (unsigned / draws as f64 - exact_unsigned).abs() < 0.1,
                    "{x}"
                );
            }
        }
    }

    #[test]
    fn no_unsigned_code_decodes_a_non_zero_value_to_zero() {
        let scale = scale_value(scale_bits(1.0));
        assert!(unsigned_value(0, scale) > 0.0);
        assert_eq!(unsigned_code(1e-30, scale, 0.999), 0);
        assert_eq!(unsigned_value(unsigned_code(1.0, scale, 0.5), scale), 1.0);
    }

    #[test]
    fn non_finite_values_keep_to_their_element() {
        let values = [1.0, f32::INFINITY, -2.0, f32::NAN, 0.5];
        let mut codes = Vec::new();
        let bits = encode_block(&values, false, STREAM, &mut codes);
        assert_eq!(scale_value(bits), 2.0);
        let decoded: Vec<f32> = codes.iter().map(|&c| signed_value(c, 2.0)).collect();
        assert!((decoded[0] - 1.0).abs() < 0.02, "{}", decoded[0]);
        assert!(decoded[1].is_nan() && decoded[3].is_nan());
        assert_eq!(decoded[2], -2.0);
        assert!((decoded[4] - 0.5).abs() < 0.02, "{}", decoded[4]);
        let mut codes = Vec::new();
        let bits = encode_block(&[4.0, f32::INFINITY, f32::NAN], true, STREAM, &mut codes);
        assert_eq!(scale_value(bits), 4.0);
        assert_eq!(codes[1..], [UNSIGNED_INF, UNSIGNED_NAN]);
        assert_eq!(unsigned_value(codes[0], 4.0), 4.0);
    }

    #[test]
    fn scales_round_up_and_stay_finite() {
        for max in [1.0f32, 1.0001, 3e-30, f32::MAX, 0.0] {
            let scale = scale_value(scale_bits(max));
            assert!(
                scale >= max.min(scale_value(0x7f7f)) && scale.is_finite(),
                "{max:e}"
            );
        }
    }
}
