//! What a block format is: the scheme the 8-bit ([`super::q8`]) and 4-bit ([`super::q4`])
//! state formats share, the CPU twin of `block.wgsl`, function for function. Table-free: a
//! code is found and decoded in closed form, with no map, search or workgroup memory. Each
//! format brings its width ([`Code`]) and its scale's encoding.
//!
//! A block is [`BLOCK`] consecutive elements, all owned by one GPU invocation, so its scale is
//! a register reduction: the block's largest finite magnitude, rounded up by the format's
//! scale encoding. Non-finite values take no part in the scale and have codes of their own, so
//! an inf or a NaN stays in its element.
//!
//! - **Signed** slots (`exp_avg`, `momentum_buffer`, ...): code `c` in `-top..=top` (two's
//!   complement in the code's bits) stands for `sign(c) * (|c| / top)^2 * scale`: square-root
//!   companding, finer near zero than a linear code. The code `-(top + 1)` is NaN (an
//!   infinity is stored as NaN).
//! - **Unsigned** slots (`exp_avg_sq`, `square_avg`, ...): code `c` in `0..levels` stands for
//!   `((c + 1) / levels)^4 * scale`: fourth-root companding, whose smallest value is
//!   `scale / levels^4` and never 0, so a non-zero second moment never decodes to 0 and an
//!   update is never `m / eps` by quantization. Code `levels` is +inf, `levels + 1` NaN.
//!
//! Codes are rounded stochastically in the companded domain: up with probability equal to
//! the fraction of a code step, from a counter-based hash of the element's index, the step and
//! the slot ([`random`]). An exponential moving average changes by a fraction of a code step
//! per step (0.1% for `exp_avg_sq` with beta2 = 0.999, against a step of 1.6% near the top of
//! an 8-bit block); rounded to nearest it would not move at all, rounded stochastically it
//! moves by that fraction on average.
//!
//! Decoding is multiplications only, each correctly rounded on every GPU API. Encoding takes
//! the companded position `u` (a reciprocal per block, then one or two square roots and a
//! product per element) and rounds it up where its fraction exceeds the random point: no
//! table, no search, no comparison against code values. Where f32 division and square roots
//! are correctly rounded, as on lavapipe, llvmpipe and CPUs, a GPU and its twin agree bit for
//! bit; elsewhere a value within an ulp of a code boundary may take the neighbouring code.

use super::codec::lowbias32;

/// Elements per block: one scale each, one invocation's.
pub const BLOCK: u64 = 32;

/// A block code's width and levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Code {
    /// Bits per code.
    pub bits: u32,
    /// 1/top rounded to f32, top = 2^(bits-1) - 1: the signed code's step.
    pub signed_step: f32,
    /// 1/levels rounded to f32, levels = 2^bits - 2: the unsigned code's step.
    pub unsigned_step: f32,
}

impl Code {
    /// The largest signed code.
    pub(crate) fn top(&self) -> u8 {
        ((1u32 << (self.bits - 1)) - 1) as u8
    }

    /// How many finite unsigned codes there are.
    pub(crate) fn levels(&self) -> u8 {
        ((1u32 << self.bits) - 2) as u8
    }

    /// The signed code of NaN.
    pub(crate) fn signed_nan(&self) -> u8 {
        1 << (self.bits - 1)
    }

    /// The unsigned code of +inf; the next one is NaN.
    pub(crate) fn unsigned_inf(&self) -> u8 {
        self.levels()
    }

    /// The code of `x` in a signed block whose scale's reciprocal is `inverse`, rounding up
    /// past `random`.
    pub(crate) fn signed_code(&self, x: f32, inverse: f32, random: f32) -> u8 {
        if !x.is_finite() {
            return self.signed_nan();
        }
        let top = self.top() as f32;
        let c = round(top * (x.abs() * inverse).sqrt(), top, random) as u8;
        let mask = ((1u32 << self.bits) - 1) as u8;
        match x < 0.0 {
            true => c.wrapping_neg() & mask,
            false => c,
        }
    }

    /// The value of signed code `code` in a block of scale `scale`.
    pub(crate) fn signed_value(&self, code: u8, scale: f32) -> f32 {
        if code == self.signed_nan() {
            return f32::NAN;
        }
        let shift = 8 - self.bits;
        let c = ((code << shift) as i8) >> shift;
        let t = c.unsigned_abs() as f32 * self.signed_step;
        let value = t * t * scale;
        match c < 0 {
            true => -value,
            false => value,
        }
    }

    /// The code of `x` (its magnitude) in an unsigned block whose scale's reciprocal is
    /// `inverse`, rounding up past `random`; a value below the smallest code's takes that
    /// code.
    pub(crate) fn unsigned_code(&self, x: f32, inverse: f32, random: f32) -> u8 {
        if x.is_nan() {
            return self.unsigned_inf() + 1;
        }
        if x.is_infinite() {
            return self.unsigned_inf();
        }
        let levels = self.levels() as f32;
        let u = levels * (x.abs() * inverse).sqrt().sqrt();
        round(u - 1.0, levels - 1.0, random) as u8
    }

    /// The value of unsigned code `code` in a block of scale `scale`.
    pub(crate) fn unsigned_value(&self, code: u8, scale: f32) -> f32 {
        if code > self.unsigned_inf() {
            return f32::NAN;
        }
        if code == self.unsigned_inf() {
            return f32::INFINITY;
        }
        let t = (code as f32 + 1.0) * self.unsigned_step;
        let q = t * t;
        q * q * scale
    }

    /// The code of `x` in a block whose scale's reciprocal is `inverse`, signed or unsigned.
    pub(crate) fn code(&self, x: f32, inverse: f32, non_negative: bool, random: f32) -> u8 {
        match non_negative {
            true => self.unsigned_code(x, inverse, random),
            false => self.signed_code(x, inverse, random),
        }
    }

    /// The value of `code` in a block of scale `scale`, signed or unsigned.
    pub(crate) fn value(&self, code: u8, scale: f32, non_negative: bool) -> f32 {
        match non_negative {
            true => self.unsigned_value(code, scale),
            false => self.signed_value(code, scale),
        }
    }

    /// Each code's value in a block of scale 1 (non-finite codes: NaN or +inf), in code
    /// order: what checkpoints carry so that other tools decode without this module. A value
    /// is `table[code] * scale` for finite entries, the entry itself otherwise.
    pub(crate) fn table(&self, non_negative: bool) -> Vec<f32> {
        (0..1u32 << self.bits)
            .map(|c| self.value(c as u8, 1.0, non_negative))
            .collect()
    }

    /// Codes the values of one block at scale `scale`: appends one code per value to `codes`.
    pub(crate) fn encode(
        &self,
        values: &[f32],
        scale: f32,
        non_negative: bool,
        stream: Stream,
        codes: &mut Vec<u8>,
    ) {
        let inverse = reciprocal(scale);
        codes.extend(values.iter().enumerate().map(|(k, &v)| {
            let index = stream.first.wrapping_add(k as u32);
            let r = random(index, stream.step, stream.slot);
            self.code(v, inverse, non_negative, r)
        }));
    }
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
/// elements get well spread points; one element gets an unrelated one each step.
/// `block_random` in block.wgsl.
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
fn round(u: f32, top: f32, random: f32) -> f32 {
    let c = u.floor().clamp(0.0, top);
    if c < top && u - c > random {
        c + 1.0
    } else {
        c
    }
}

/// The scale of a block whose largest finite magnitude is `max`, kept as the f32 bits above
/// bit `shift` (16: a bf16; 23: the exponent byte, a power of two; the sign bit is 0), rounded
/// up: every finite value of the block is at most the scale, which is at most the largest
/// finite such value. `block_scale_bits` in block.wgsl.
pub fn scale_bits(max: f32, shift: u32) -> u32 {
    ((max.to_bits() + ((1 << shift) - 1)) >> shift).min(f32::MAX.to_bits() >> shift)
}

/// The value of a scale kept as the f32 bits above bit `shift`.
pub fn scale_value(raw: u32, shift: u32) -> f32 {
    f32::from_bits(raw << shift)
}

/// A block format: its code and its scale's width, all that the GPU glue, the twin and
/// checkpoints need to know of it. Codes of `code.bits` are packed little-end first in bytes
/// (two 4-bit codes per byte, element `2k` in the low nibble), scales in whole little-endian
/// bytes, one per block of `BLOCK`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockFormat {
    /// The code of each element.
    pub code: Code,
    /// Where each block's scale sits in an f32's bits: 16 for a bf16, 23 for an exponent
    /// byte (see `scale_bits`).
    pub scale_shift: u32,
}

impl BlockFormat {
    /// Bytes of one block's scale.
    pub(crate) fn scale_bytes(&self) -> u64 {
        (31 - self.scale_shift as u64).div_ceil(8)
    }

    /// The scale of block `block` of `scales`.
    pub(crate) fn scale(&self, scales: &[u8], block: usize) -> f32 {
        let per = self.scale_bytes() as usize;
        let raw = scales[per * block..per * block + per]
            .iter()
            .rev()
            .fold(0u32, |raw, &byte| raw << 8 | byte as u32);
        scale_value(raw, self.scale_shift)
    }

    /// Element `e`'s code in `codes`.
    pub(crate) fn code_at(&self, codes: &[u8], e: usize) -> u8 {
        let bits = self.code.bits as usize;
        let (byte, shift) = (e * bits / 8, (e * bits) % 8);
        (codes[byte] >> shift) & ((1u16 << bits) - 1) as u8
    }

    /// The value of element `e` of the codes and scales of a whole state.
    pub(crate) fn value_at(
        &self,
        codes: &[u8],
        scales: &[u8],
        e: usize,
        non_negative: bool,
    ) -> f32 {
        let scale = self.scale(scales, e / BLOCK as usize);
        self.code.value(self.code_at(codes, e), scale, non_negative)
    }

    /// Codes the new values of one block, its first element `stream.first`, into the codes
    /// and scales of the whole state: its scale from its largest finite magnitude, then each
    /// code rounded with `stream`'s random points.
    pub(crate) fn encode_block(
        &self,
        values: &[f32],
        non_negative: bool,
        stream: Stream,
        codes: &mut [u8],
        scales: &mut [u8],
    ) {
        let raw = scale_bits(finite_max(values), self.scale_shift);
        let per = self.scale_bytes() as usize;
        let block = stream.first as usize / BLOCK as usize;
        scales[per * block..per * block + per].copy_from_slice(&raw.to_le_bytes()[..per]);
        let mut fresh = Vec::with_capacity(values.len());
        let scale = scale_value(raw, self.scale_shift);
        self.code
            .encode(values, scale, non_negative, stream, &mut fresh);
        let bits = self.code.bits as usize;
        let mask = ((1u16 << bits) - 1) as u8;
        for (k, code) in fresh.into_iter().enumerate() {
            let e = stream.first as usize + k;
            let (byte, shift) = (e * bits / 8, (e * bits) % 8);
            codes[byte] = (codes[byte] & !(mask << shift)) | (code << shift);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::super::{q4, q8};
    use super::*;

    /// A code's value sits within an ulp of the code's position: it codes back to itself at
    /// a random point of 0.5, and to itself or a neighbour at the extremes.
    #[test]
    fn every_code_decodes_to_a_value_that_encodes_back_to_it() {
        for code_kind in [q8::CODE, q4::CODE] {
            for scale in [1.0f32, 2f32.powi(-40), 0.75, 2.0e30] {
                for code in 0..(1u32 << code_kind.bits) as u8 {
                    for non_negative in [false, true] {
                        let value = code_kind.value(code, scale, non_negative);
                        let nan = code == code_kind.signed_nan() && !non_negative;
                        if nan || value == 0.0 || !value.is_finite() {
                            continue;
                        }
                        for random in [0.0, 0.5, 0.999_999_9] {
                            let back =
                                code_kind.code(value, reciprocal(scale), non_negative, random);
                            let apart = match non_negative {
                                true => back.abs_diff(code),
                                false => {
                                    let shift = 8 - code_kind.bits;
                                    (((back << shift) as i8) >> shift)
                                        .abs_diff(((code << shift) as i8) >> shift)
                                }
                            };
                            let allowed = if random == 0.5 { 0 } else { 1 };
                            assert!(apart <= allowed, "{code} ({non_negative}) at {scale:e}, {random}: {value:e} -> {back}");
                        }
                    }
                }
            }
        }
    }

    /// Rounding is to one of the two codes around the value, up with the probability of the
    /// fraction of a step in the companded domain.
    #[test]
    fn codes_round_to_a_neighbour_and_are_unbiased_in_the_companded_domain() {
        let code = q8::CODE;
        for k in 0..=2_000 {
            let x = k as f32 / 2_000.0;
            let exact_signed = 127.0 * (x as f64).sqrt();
            let exact_unsigned = 254.0 * (x as f64).sqrt().sqrt() - 1.0;
            let (mut signed, mut unsigned) = (0.0, 0.0);
            let draws = 256;
            for d in 0..draws {
                let r = random(d, 7, 1);
                let c = code.signed_code(x, 1.0, r) as f64;
                assert!(
                    c == exact_signed.floor() || c == exact_signed.ceil(),
                    "{x}: {c}"
                );
                assert_eq!(code.signed_code(-x, 1.0, r), (-(c as i8)) as u8);
                signed += c;
                let u = code.unsigned_code(x, 1.0, r) as f64;
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
        for code in [q8::CODE, q4::CODE] {
            assert!(code.unsigned_value(0, 1.0) > 0.0);
            assert_eq!(code.unsigned_code(1e-30, 1.0, 0.999), 0);
            assert_eq!(
                code.unsigned_value(code.unsigned_code(1.0, 1.0, 0.5), 1.0),
                1.0
            );
        }
    }
}
