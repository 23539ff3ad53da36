//! 8-bit block state ([`StateFormat::Block8`](super::StateFormat::Block8)): the block scheme
//! of [`super::block`] at 8 bits, with a bf16 scale per block; the CPU twin of `q8.wgsl`.
//!
//! Signed codes run to ±127 (`0x80` is NaN), unsigned ones to 253 (254 is +inf, 255 NaN), one
//! byte per element. The scale is the block's largest finite magnitude rounded up to a bf16
//! (two per `u32`, 1 + 2/32 bytes per element in all): bf16 rather than f16 because second
//! moments go far below f16's range (a grad of 1e-6 has a square of 1e-12).

use super::block::{finite_max, Code, Stream};

/// The 8-bit code: 1/127 and 1/254 rounded to f32 (`Q8_SIGNED_STEP` and `Q8_UNSIGNED_STEP`
/// in q8.wgsl).
pub const CODE: Code = Code {
    bits: 8,
    signed_step: f32::from_bits(0x3c01_0204),
    unsigned_step: f32::from_bits(0x3b81_0204),
};

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

/// Encodes one block: appends its codes to `codes` and returns its scale's bf16 bits.
pub fn encode_block(
    values: &[f32],
    non_negative: bool,
    stream: Stream,
    codes: &mut Vec<u8>,
) -> u16 {
    let bits = scale_bits(finite_max(values));
    CODE.encode(values, scale_value(bits), non_negative, stream, codes);
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
        assert_eq!(CODE.signed_step, 1.0 / 127.0);
        assert_eq!(CODE.unsigned_step, 1.0 / 254.0);
        assert_eq!(
            (CODE.top(), CODE.levels(), CODE.signed_nan()),
            (127, 254, 0x80)
        );
    }

    #[test]
    fn non_finite_values_keep_to_their_element() {
        let values = [1.0, f32::INFINITY, -2.0, f32::NAN, 0.5];
        let mut codes = Vec::new();
        let bits = encode_block(&values, false, STREAM, &mut codes);
        assert_eq!(scale_value(bits), 2.0);
        let decoded: Vec<f32> = codes.iter().map(|&c| CODE.signed_value(c, 2.0)).collect();
        assert!((decoded[0] - 1.0).abs() < 0.02, "{}", decoded[0]);
        assert!(decoded[1].is_nan() && decoded[3].is_nan());
        assert_eq!(decoded[2], -2.0);
        assert!((decoded[4] - 0.5).abs() < 0.02, "{}", decoded[4]);
        let mut codes = Vec::new();
        let bits = encode_block(&[4.0, f32::INFINITY, f32::NAN], true, STREAM, &mut codes);
        assert_eq!(scale_value(bits), 4.0);
        assert_eq!(codes[1..], [254, 255]);
        assert_eq!(CODE.unsigned_value(codes[0], 4.0), 4.0);
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
