//! 4-bit block state (`state=4bit`, [`StateFormat::BLOCK4`](super::StateFormat::BLOCK4)):
//! the block scheme of `block.rs` at 4 bits, with an exponent byte as each block's
//! scale. Everything else about it (its WGSL, twin, buffer and checkpoint layout) follows
//! from this declaration.
//!
//! Signed codes run to ±7 (`0x8` is NaN), unsigned ones to 13 (14 is +inf, 15 NaN, no code
//! for 0, as torchao's and Li et al.'s 4-bit second moments have none), two per byte, element
//! `2k` in the low nibble. The scale is one byte: the power of two at or above the block's
//! largest finite magnitude, as an f32 exponent field (0 for an all-zero block). A byte rather
//! than a bf16: a 4-bit code's steps are a seventh or a fourteenth of the range, far coarser
//! than what a power of two gives up, and at 1 byte per 32 elements 4-bit state takes
//! 0.5 + 1/32 bytes per element.

use super::block::{BlockFormat, Code};
use super::{Layout, StateFormat};

/// The 4-bit code: 1/7 and 1/14 rounded to f32.
pub const CODE: Code = Code {
    bits: 4,
    signed_step: f32::from_bits(0x3e12_4925),
    unsigned_step: f32::from_bits(0x3d92_4925),
};

/// The format: 4-bit codes, exponent-byte scales.
pub const FORMAT: StateFormat = StateFormat::new(
    "4bit",
    Layout::Blocks(BlockFormat {
        code: CODE,
        scale_shift: 23,
    }),
);

#[cfg(test)]
mod tests {
    use super::super::block::{scale_bits, scale_value, Stream, BLOCK};
    use super::*;

    #[test]
    fn steps_are_the_nearest_f32() {
        assert_eq!(CODE.signed_step, 1.0 / 7.0);
        assert_eq!(CODE.unsigned_step, 1.0 / 14.0);
        assert_eq!((CODE.top(), CODE.levels(), CODE.signed_nan()), (7, 14, 0x8));
    }

    #[test]
    fn scales_are_the_power_of_two_at_or_above() {
        for max in [1.0f32, 1.5, 3e-30, 1e-40, f32::MAX, 0.0, 0.75] {
            let scale = scale_value(scale_bits(max, 23), 23);
            assert!(scale >= max.min(2f32.powi(127)), "{max:e}: {scale:e}");
            assert!(
                max == 0.0 || scale <= 2.0 * max.max(f32::MIN_POSITIVE / 2.0),
                "{max:e}"
            );
        }
    }

    #[test]
    fn non_finite_values_keep_to_their_element() {
        let Layout::Blocks(format) = FORMAT.layout() else {
            unreachable!("a block format")
        };
        let stream = Stream {
            first: 0,
            step: 1,
            slot: 0,
        };
        let codes_of = |values: &[f32], non_negative| {
            let (mut codes, mut scales) = (vec![0u8; BLOCK as usize / 2], vec![0u8; 1]);
            format.encode_block(values, non_negative, stream, &mut codes, &mut scales);
            let codes: Vec<u8> = (0..values.len())
                .map(|e| format.code_at(&codes, e))
                .collect();
            (codes, format.scale(&scales, 0))
        };
        let (codes, scale) = codes_of(&[1.0, f32::INFINITY, -0.5, f32::NAN], false);
        assert_eq!(scale, 1.0);
        assert_eq!([codes[1], codes[3]], [0x8; 2]);
        assert_eq!(CODE.signed_value(codes[0], 1.0), 1.0);
        let (codes, scale) = codes_of(&[4.0, f32::INFINITY, f32::NAN, 1e-30], true);
        assert_eq!(scale, 4.0);
        assert_eq!(codes[1..3], [14, 15]);
        assert!(CODE.unsigned_value(codes[3], 4.0) > 0.0);
    }
}
