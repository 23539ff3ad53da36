//! The 8-bit master correction ([`Master::Bf16Correction`](super::Master::Bf16Correction)):
//! the CPU twin of `correction.wgsl`, function for function. The f32 master of a bf16 param is
//! kept as the param (the master rounded to nearest, ties to even) and one byte, a signed
//! count of 1/256ths of the param's bf16 ulp: the master is `param + code * ulp / 256`, within
//! ulp/512 of the f32 master it stands for (2^-17 of it relative, against bf16's 2^-9),
//! where the 16-bit remainder keeps it exactly. The byte is rounded stochastically, up with
//! probability equal to the dropped fraction of a step, from the counter-based hash of the
//! element and the step that stochastic rounding uses ([`random_bits`]), so updates smaller
//! than the step are kept on average (FlashOptim's weight splitting, with a random rounding).
//!
//! Every operation is exact in f32: the residual `master - param` (two values within half an
//! ulp of each other), scaling by a power of two, and the reconstruction (at most 16
//! significant bits). So every GPU and the twin agree bit for bit. A non-finite param, or a
//! master past bf16's range (the param then infinite), has correction 0.

use super::codec::{bf16_nearest, bf16_value, random_bits};

/// The bf16 exponent field (biased) at or below which one step is 2^-126: steps of smaller
/// params would leave f32's normal range.
const SMALLEST_EXPONENT: u32 = 16;

/// One step of the correction of a param of bf16 bits `param` (ulp / 256), and its
/// reciprocal, as f32 powers of two; `None` for a non-finite param.
fn steps(param: u16) -> Option<(f32, f32)> {
    let exponent = ((param >> 7) & 0xff) as u32;
    if exponent == 0xff {
        return None;
    }
    let exponent = exponent.max(SMALLEST_EXPONENT);
    // ulp / 256 = 2^(E - 127 - 7 - 8): f32 exponent field E - 15; its reciprocal 269 - E.
    Some((
        f32::from_bits((exponent - 15) << 23),
        f32::from_bits((269 - exponent) << 23),
    ))
}

/// The master a bf16 param of bits `param` and its correction `code` stand for.
pub fn join(param: u16, code: u8) -> f32 {
    let value = bf16_value(param);
    match steps(param) {
        Some((step, _)) => value + (code as i8) as f32 * step,
        None => value,
    }
}

/// The bf16 param (nearest, ties to even) and the correction byte of master `master`, the
/// byte rounded up where its dropped fraction exceeds the random point of element `index`
/// at step `step`.
pub fn split(master: f32, index: u32, step: u32) -> (u16, u8) {
    let param = bf16_nearest(master);
    let Some((_, inverse)) = steps(param) else {
        return (param, 0);
    };
    let random = (random_bits(index, step) >> 8) as f32 * (1.0 / 16_777_216.0);
    let position = (master - bf16_value(param)) * inverse;
    let below = position.floor();
    let code = if position - below > random {
        below + 1.0
    } else {
        below
    };
    (param, code.clamp(-128.0, 127.0) as i8 as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masters of every bit-pattern class: zeros, subnormal-sized, the smallest normal
    /// exponents, ordinary values of both signs, around powers of two (where the ulp below is
    /// half the ulp above), the largest bf16 values, ties, infinities and NaN.
    fn masters() -> Vec<f32> {
        let mut masters = vec![0.0, -0.0, 1e-40, -3e-39, f32::MIN_POSITIVE, 1.0e-34];
        for base in [1.0f32, -1.0, 3.0, 0.1, -1234.5, 6.0e20, -2.0e-30, 3.0e38] {
            for offset in -70..70 {
                masters.push(f32::from_bits(
                    (base.to_bits() as i32 + offset * 937) as u32,
                ));
            }
        }
        for power in [1.0f32, 2.0, 0.5, 1024.0, -4.0] {
            for k in 1..600 {
                masters.push(f32::from_bits(power.to_bits() - k));
                masters.push(f32::from_bits(power.to_bits() + k));
            }
        }
        masters.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000)]); // ties
        masters.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        masters
    }

    /// The reconstruction is within a step (ulp / 256) of the master, and within half a step
    /// on average over the random points; never more than 2^-16 of the master relative.
    #[test]
    fn the_master_is_reconstructed_within_a_step_in_every_class() {
        for master in masters() {
            let (param, code) = split(master, 12_345, 3);
            let back = join(param, code);
            if !master.is_finite() {
                assert!(
                    back.is_nan() == master.is_nan() && back.is_infinite() == master.is_infinite()
                );
                continue;
            }
            assert_eq!(param, bf16_nearest(master), "{master:e}");
            let step = steps(param).map_or(0.0, |(s, _)| s);
            let error = (back as f64 - master as f64).abs();
            assert!(
                error <= step as f64 * 1.000_001,
                "{master:e}: {back:e}, step {step:e}"
            );
            if master.abs() > 1e-30 {
                assert!(error / (master.abs() as f64) < 2f64.powi(-15), "{master:e}");
            }
        }
    }

    /// Rounded stochastically: over many random points the reconstruction averages the
    /// master, so updates smaller than a step are not lost.
    #[test]
    fn the_correction_is_unbiased() {
        for master in [
            1.000_013_4f32,
            -2.5_f32.next_up(),
            0.1,
            700.125_f32.next_down(),
        ] {
            let draws = 4000;
            let mean: f64 = (0..draws)
                .map(|k| {
                    let (param, code) = split(master, 77, k);
                    join(param, code) as f64
                })
                .sum::<f64>()
                / draws as f64;
            let step = steps(bf16_nearest(master)).unwrap().0 as f64;
            assert!(
                (mean - master as f64).abs() < 0.05 * step,
                "{master}: {mean}"
            );
        }
    }

    #[test]
    fn a_zero_correction_is_the_param_itself() {
        for bits in [0u16, 0x3f80, 0xc2f7, 0x0001, 0x7f7f, 0x7f80] {
            assert_eq!(join(bits, 0).to_bits(), bf16_value(bits).to_bits());
        }
    }
}
