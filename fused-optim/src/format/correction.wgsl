// The 8-bit master correction: src/format/correction.rs is its twin, function for function
// (the layout is described there). Every operation is exact in f32. After codec.wgsl.

// One step of the correction (ulp / 256) of a param of bf16 bits `param`, and its
// reciprocal; x is 0 for a non-finite param.
fn correction_steps(param: u32) -> vec2<f32> {
    let exponent = (param >> 7u) & 0xffu;
    let e = max(exponent, 16u);
    let steps = vec2<f32>(bitcast<f32>((e - 15u) << 23u), bitcast<f32>((269u - e) << 23u));
    return select(steps, vec2<f32>(0.0), exponent == 0xffu);
}

fn join_correction(param: u32, code: u32) -> f32 {
    let c = f32(bitcast<i32>(code << 24u) >> 24u);
    return bf16_value(param) + c * correction_steps(param).x;
}

// The bf16 param (x) and the correction byte (y) of `master`, rounded up past the random
// point of element `index` at step `step`.
fn split_correction(master: f32, index: u32, step: u32) -> vec2<u32> {
    let param = bf16_nearest(master);
    let inverse = correction_steps(param).y;
    let random = f32(random_bits(index, step) >> 8u) * 0x1p-24f;
    let position = (master - bf16_value(param)) * inverse;
    let below = floor(position);
    let rounded = clamp(select(below, below + 1.0, position - below > random), -128.0, 127.0);
    let code = select(rounded, 0.0, ((param >> 7u) & 0xffu) == 0xffu);
    return vec2<u32>(param, bitcast<u32>(i32(code)) & 0xffu);
}
