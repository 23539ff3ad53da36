// 4-bit block state: the scale encoding of src/format/q4.rs (its twin); the codes are
// block.wgsl's at 4 bits.

// The scale byte of a block whose largest finite magnitude is `m`: the f32 exponent field of
// the power of two at or above it, at most 254; 0 for 0.
fn q4_scale_bits(m: f32) -> u32 {
    let bits = bitcast<u32>(m);
    return min((bits >> 23u) + select(0u, 1u, (bits & 0x7fffffu) != 0u), 254u);
}

fn q4_scale_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 23u);
}
