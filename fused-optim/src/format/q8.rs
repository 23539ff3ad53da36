//! 8-bit block state (`state=8bit`, [`StateFormat::BLOCK8`](super::StateFormat::BLOCK8)):
//! the block scheme of `block.rs` at 8 bits, with a bf16 scale per block. Everything
//! else about it (its WGSL, twin, buffer and checkpoint layout) follows from this declaration.
//!
//! Signed codes run to ±127 (`0x80` is NaN), unsigned ones to 253 (254 is +inf, 255 NaN), one
//! byte per element. The scale is the block's largest finite magnitude rounded up to a bf16
//! (two per `u32`, 1 + 2/32 bytes per element in all): bf16 rather than f16 because second
//! moments go far below f16's range (a grad of 1e-6 has a square of 1e-12).

use super::block::{BlockFormat, Code};
use super::{Layout, StateFormat};

/// The 8-bit code: 1/127 and 1/254 rounded to f32.
pub const CODE: Code = Code {
    bits: 8,
    signed_step: f32::from_bits(0x3c01_0204),
    unsigned_step: f32::from_bits(0x3b81_0204),
};

/// The format: 8-bit codes, bf16 scales.
pub const FORMAT: StateFormat = StateFormat::new(
    "8bit",
    Layout::Blocks(BlockFormat {
        code: CODE,
        scale_shift: 16,
    }),
);

#[cfg(test)]
mod tests {
    use super::super::block::{scale_bits, scale_value, Stream, BLOCK};
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

    /// The block of `values`, coded: each element's value and the block's scale.
    fn coded(values: &[f32], non_negative: bool) -> (Vec<f32>, Vec<u8>, f32) {
        let Layout::Blocks(format) = FORMAT.layout() else {
            unreachable!("a block format")
        };
        let (mut codes, mut scales) = (vec![0u8; BLOCK as usize], vec![0u8; 2]);
        format.encode_block(values, non_negative, STREAM, &mut codes, &mut scales);
        let decoded = (0..values.len())
            .map(|e| format.value_at(&codes, &scales, e, non_negative))
            .collect();
        (decoded, codes, format.scale(&scales, 0))
    }

    #[test]
    fn non_finite_values_keep_to_their_element() {
        let (decoded, _, scale) = coded(&[1.0, f32::INFINITY, -2.0, f32::NAN, 0.5], false);
        assert_eq!(scale, 2.0);
        assert!((decoded[0] - 1.0).abs() < 0.02, "{}", decoded[0]);
        assert!(decoded[1].is_nan() && decoded[3].is_nan());
        assert_eq!(decoded[2], -2.0);
        assert!((decoded[4] - 0.5).abs() < 0.02, "{}", decoded[4]);
        let (decoded, codes, scale) = coded(&[4.0, f32::INFINITY, f32::NAN], true);
        assert_eq!(scale, 4.0);
        assert_eq!(codes[1..3], [254, 255]);
        assert_eq!(decoded[0], 4.0);
    }

    #[test]
    fn scales_round_up_and_stay_finite() {
        for max in [1.0f32, 1.0001, 3e-30, f32::MAX, 0.0] {
            let scale = scale_value(scale_bits(max, 16), 16);
            assert!(
                scale >= max.min(scale_value(0x7f7f, 16)) && scale.is_finite(),
                "{max:e}"
            );
            assert!(scale <= max * (1.0 + 2f32.powi(-7)), "{max:e}");
        }
    }
}
