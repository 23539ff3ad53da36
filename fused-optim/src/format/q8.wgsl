// 8-bit block state: the scale encoding of src/format/q8.rs (its twin); the codes are
// block.wgsl's at 8 bits.

// The bf16 bits of the scale of a block whose largest finite magnitude is `m`: rounded up,
// at most bf16's largest finite value.
fn q8_scale_bits(m: f32) -> u32 {
    return min((bitcast<u32>(m) + 0xffffu) >> 16u, 0x7f7fu);
}

fn q8_scale_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}
