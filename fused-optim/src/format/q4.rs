//! 4-bit block state ([`StateFormat::Block4`](super::StateFormat::Block4)): the CPU twin of
//! `q4.wgsl`, function for function. The 8-bit code's scheme ([`super::q8`]) at 4 bits: blocks
//! of [`BLOCK`](super::BLOCK) elements owned by one invocation, companded codes rounded
//! stochastically at the same random points, non-finite values with codes of their own and no
//! part in the scale. Two codes per byte, element `2k` in the low nibble.
//!
//! - **Signed** slots: code `c` in -7..=7 (a nibble, two's complement) stands for
//!   `sign(c) * (|c| / 7)^2 * scale`; `0x8` is NaN (an infinity is stored as NaN).
//! - **Unsigned** slots: code `c` in 0..=13 stands for `((c + 1) / 14)^4 * scale`, never 0
//!   (torchao's and Li et al.'s 4-bit second moments have no zero either); 14 is +inf, 15 NaN.
//!
//! The scale is one byte: the power of two at or above the block's largest finite magnitude,
//! as an f32 exponent field (0 for an all-zero block). A byte rather than a bf16: a 4-bit
//! code's steps are a seventh or a fourteenth of the range, far coarser than what a power of
//! two gives up (the top element lands between codes 4.9 and 7 of a signed block, 10.8 and 13
//! of an unsigned one), and 1 byte per 32 elements makes 4-bit state 0.53 bytes per element.

use super::q8::{finite_max, random, reciprocal, round, Stream};

/// 1/7 and 1/14 rounded to f32 (`Q4_INV7`, `Q4_INV14` in q4.wgsl).
const INV7: f32 = f32::from_bits(0x3e12_4925);
const INV14: f32 = f32::from_bits(0x3d92_4925);
/// The signed code of NaN.
pub const SIGNED_NAN: u8 = 0x8;
/// The unsigned code of +inf.
pub const UNSIGNED_INF: u8 = 14;
/// The unsigned code of NaN.
pub const UNSIGNED_NAN: u8 = 15;

/// The scale byte of a block whose largest finite magnitude is `max`: the f32 exponent field
/// of the power of two at or above it (at most 254), 0 for 0.
pub fn scale_bits(max: f32) -> u8 {
    let bits = max.to_bits();
    let up = (bits & 0x7f_ffff != 0) as u32;
    ((bits >> 23) + up).min(254) as u8
}

/// The value of a scale byte.
pub fn scale_value(bits: u8) -> f32 {
    f32::from_bits((bits as u32) << 23)
}

/// The code of `x` in a signed block of scale `scale`, rounding up past `random`.
pub fn signed_code(x: f32, scale: f32, random: f32) -> u8 {
    if !x.is_finite() {
        return SIGNED_NAN;
    }
    let u = 7.0 * (x.abs() * reciprocal(scale)).sqrt();
    let c = round(u, 7.0, random) as u8;
    if x < 0.0 {
        c.wrapping_neg() & 0xf
    } else {
        c
    }
}

/// The value of signed code `code` in a block of scale `scale`.
pub fn signed_value(code: u8, scale: f32) -> f32 {
    if code == SIGNED_NAN {
        return f32::NAN;
    }
    let c = ((code << 4) as i8) >> 4;
    let t = c.unsigned_abs() as f32 * INV7;
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
    let u = 14.0 * (x.abs() * reciprocal(scale)).sqrt().sqrt();
    round(u - 1.0, 13.0, random) as u8
}

/// The value of unsigned code `code` in a block of scale `scale`.
pub fn unsigned_value(code: u8, scale: f32) -> f32 {
    match code {
        UNSIGNED_NAN => f32::NAN,
        UNSIGNED_INF => f32::INFINITY,
        _ => {
            let t = (code as f32 + 1.0) * INV14;
            let q = t * t;
            q * q * scale
        }
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
/// what checkpoints carry, as for 8-bit codes.
pub fn table(non_negative: bool) -> [f32; 16] {
    std::array::from_fn(|c| value(c as u8, 1.0, non_negative))
}

/// Encodes one block: appends its codes (one per element, unpacked) to `codes` and returns
/// its scale byte.
pub fn encode_block(values: &[f32], non_negative: bool, stream: Stream, codes: &mut Vec<u8>) -> u8 {
    let bits = scale_bits(finite_max(values));
    let scale = scale_value(bits);
    codes.extend(values.iter().enumerate().map(|(k, &v)| {
        let r = random(
            stream.first.wrapping_add(k as u32),
            stream.step,
            stream.slot,
        );
        match non_negative {
            true => unsigned_code(v, scale, r),
            false => signed_code(v, scale, r),
        }
    }));
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_the_nearest_f32() {
        assert_eq!(INV7, 1.0 / 7.0);
        assert_eq!(INV14, 1.0 / 14.0);
    }

    #[test]
    fn scales_are_the_power_of_two_at_or_above() {
        for max in [1.0f32, 1.5, 3e-30, 1e-40, f32::MAX, 0.0, 0.75] {
            let scale = scale_value(scale_bits(max));
            assert!(scale >= max.min(2f32.powi(127)), "{max:e}: {scale:e}");
            assert!(
                max == 0.0 || scale <= 2.0 * max.max(f32::MIN_POSITIVE / 2.0),
                "{max:e}"
            );
        }
    }

    #[test]
    fn every_code_decodes_to_a_value_that_codes_back_to_it() {
        for scale in [1.0f32, 2f32.powi(-40), 0.5] {
            for code in 0..16u8 {
                for non_negative in [false, true] {
                    let value = value(code, scale, non_negative);
                    if (code == SIGNED_NAN && !non_negative) || value == 0.0 || !value.is_finite() {
                        continue;
                    }
                    let back = match non_negative {
                        true => unsigned_code(value, scale, 0.5),
                        false => signed_code(value, scale, 0.5),
                    };
                    assert_eq!(
                        back, code,
                        "{code} ({non_negative}) at {scale:e}: {value:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn non_finite_values_keep_to_their_element() {
        let stream = Stream {
            first: 0,
            step: 1,
            slot: 0,
        };
        let mut codes = Vec::new();
        let bits = encode_block(
            &[1.0, f32::INFINITY, -0.5, f32::NAN],
            false,
            stream,
            &mut codes,
        );
        assert_eq!(scale_value(bits), 1.0);
        assert_eq!([codes[1], codes[3]], [SIGNED_NAN; 2]);
        assert_eq!(signed_value(codes[0], 1.0), 1.0);
        let mut codes = Vec::new();
        let bits = encode_block(
            &[4.0, f32::INFINITY, f32::NAN, 1e-30],
            true,
            stream,
            &mut codes,
        );
        assert_eq!(scale_value(bits), 4.0);
        assert_eq!(codes[1..3], [UNSIGNED_INF, UNSIGNED_NAN]);
        assert!(unsigned_value(codes[3], 4.0) > 0.0);
    }
}
