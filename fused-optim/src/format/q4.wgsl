// 4-bit block state: src/format/q4.rs is its twin, function for function (the layout is
// described there). After q8.wgsl, whose rounding, random points and helpers it shares.

// 1/7 and 1/14 rounded to f32 (bits 0x3e124925 and 0x3d924925).
const Q4_INV7: f32 = 0x1.24924ap-3f;
const Q4_INV14: f32 = 0x1.24924ap-4f;

// The scale byte of a block whose largest finite magnitude is `m`: the f32 exponent field of
// the power of two at or above it, at most 254; 0 for 0.
fn q4_scale_bits(m: f32) -> u32 {
    let bits = bitcast<u32>(m);
    return min((bits >> 23u) + select(0u, 1u, (bits & 0x7fffffu) != 0u), 254u);
}

fn q4_scale_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 23u);
}

fn q4_signed_code(x: V, r: f32, random: V) -> VU {
    let c = q8_round(7.0 * sqrt(abs(x) * r), 7.0, random);
    let signed = select(VI(c), -VI(c), x < V(0.0));
    return select(bitcast<VU>(signed) & VU(0xfu), VU(0x8u), !q8_finite(x));
}

fn q4_signed_value(code: VU, s: f32) -> V {
    let c = bitcast<VI>(code << VU(28u)) >> VU(28u);
    let t = V(abs(c)) * Q4_INV7;
    let magnitude = t * t * s;
    let value = select(magnitude, -magnitude, c < VI(0));
    return bitcast<V>(select(bitcast<VU>(value), VU(0x7fc00000u), code == VU(0x8u)));
}

fn q4_unsigned_code(x: V, r: f32, random: V) -> VU {
    let u = 14.0 * sqrt(sqrt(abs(x) * r));
    let c = q8_round(u - 1.0, 13.0, random);
    let nan = (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
    let special = select(VU(14u), VU(15u), nan);
    return select(VU(c), special, !q8_finite(x));
}

fn q4_unsigned_value(code: VU, s: f32) -> V {
    let t = (V(code) + 1.0) * Q4_INV14;
    let q = t * t;
    let value = q * q * s;
    let special = select(VU(0x7f800000u), VU(0x7fc00000u), code == VU(15u));
    return bitcast<V>(select(bitcast<VU>(value), special, code >= VU(14u)));
}
