//! The 256-entry dynamic quantization maps of 8-bit block-wise state, signed for slots that
//! can be negative and unsigned for those that cannot.
//!
//! The idea is bitsandbytes' dynamic (tree) quantization: values are spread over decades,
//! 10^-7..10^-6 up to 0.1..1, with twice as many values in each decade as in the one below, so
//! the map is dense where a block's values are close to its absmax and still reaches values a
//! million times smaller. Within a decade the values are the midpoints of an even split of
//! [0.1, 1]. The signed map has 2^d values of each sign in decade d (d = 0..6); the unsigned one
//! has 2^(d+1) non-negative ones; both add 0 and 1, so a block's largest magnitude is stored
//! exactly and zero stays zero.

/// One quantization map: its 256 values in ascending order (the value of code `c` is
/// `values[c]`, times the block's absmax) and the 255 midpoints between neighbours that encoding
/// compares against, padded with +infinity to 256.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMap {
    /// Value of each code, ascending, in [-1, 1].
    pub values: [f32; 256],
    /// `midpoints[k]` lies between `values[k]` and `values[k + 1]`; `midpoints[255]` is +inf.
    pub midpoints: [f32; 256],
}

impl QuantMap {
    /// The map for a slot that can be negative (`exp_avg`, `momentum_buffer`, ...).
    pub fn signed() -> Self {
        Self::dynamic(true)
    }

    /// The map for a slot that is never negative (`exp_avg_sq`, `square_avg`, `sum`, ...).
    pub fn unsigned() -> Self {
        Self::dynamic(false)
    }

    fn dynamic(signed: bool) -> Self {
        let mut values: Vec<f64> = vec![0.0, 1.0];
        for decade in 0..7 {
            let count = if signed { 1 << decade } else { 2 << decade };
            let scale = 10f64.powi(decade - 6);
            for k in 0..count {
                let fraction = 0.1 + 0.9 * (k as f64 + 0.5) / count as f64;
                values.push(scale * fraction);
                if signed {
                    values.push(-scale * fraction);
                }
            }
        }
        values.sort_by(f64::total_cmp);
        assert_eq!(values.len(), 256, "a quantization map has 256 codes");
        let mut map = Self {
            values: [0.0; 256],
            midpoints: [f32::INFINITY; 256],
        };
        for (code, value) in values.iter().enumerate() {
            map.values[code] = *value as f32;
        }
        for k in 0..255 {
            map.midpoints[k] = ((values[k] + values[k + 1]) / 2.0) as f32;
        }
        map
    }

    /// The code of `value` in a block of absmax `absmax`: how many midpoints, times absmax,
    /// lie below it, found by binary search; the code of 0 where the block is all zero. The
    /// WGSL `quantize` performs the same comparisons.
    pub fn code(&self, value: f32, absmax: f32) -> u8 {
        if absmax == 0.0 {
            return self.zero_code();
        }
        let mut code = 0usize;
        for step in [128, 64, 32, 16, 8, 4, 2, 1] {
            if value > self.midpoints[code + step - 1] * absmax {
                code += step;
            }
        }
        code as u8
    }

    /// The value of `code` in a block of absmax `absmax`.
    pub fn value(&self, code: u8, absmax: f32) -> f32 {
        self.values[code as usize] * absmax
    }

    /// The code whose value is 0.
    pub fn zero_code(&self) -> u8 {
        self.values.iter().position(|&v| v == 0.0).unwrap_or(0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_and_hold_zero_and_one_exactly() {
        for map in [QuantMap::signed(), QuantMap::unsigned()] {
            assert!(map.values.windows(2).all(|w| w[0] < w[1]), "{map:?}");
            assert_eq!(map.values[255], 1.0);
            assert_eq!(map.value(map.zero_code(), 3.0), 0.0);
            for k in 0..255 {
                assert!(map.values[k] < map.midpoints[k] && map.midpoints[k] < map.values[k + 1]);
            }
            // Every code decodes to a value that encodes back to it.
            for code in 0..=255u8 {
                assert_eq!(map.code(map.value(code, 2.5), 2.5), code);
            }
        }
        assert_eq!(QuantMap::unsigned().values[0], 0.0);
        assert!(QuantMap::signed().values[0] < -0.99);
    }
}
