// What a block format is: the scheme every block state format shares, at any code width and
// scale width (each format's declaration, q8.rs or q4.rs, gives them). Its twin is
// src/format/block.rs, function for function (the scheme is described there). Over `V`
// (vec4<f32> or f32) with the host's `VU`, `VI` and `VB` of the same width: a vector
// invocation codes four elements at once. No table and no workgroup memory.

fn block_finite(x: V) -> VB {
    return (bitcast<VU>(x) & VU(0x7fffffffu)) < VU(0x7f800000u);
}

// |x| where finite, else 0: what a block's scale is the largest of.
fn block_magnitude(x: V) -> V {
    return select(V(0.0), abs(x), block_finite(x));
}

fn block_reciprocal(s: f32) -> f32 {
    return select(1.0 / s, 0.0, s == 0.0);
}

// The random points in [0, 1) at which the codes of elements `index` round up at step `step`
// in slot `slot`: a multiplicative hash of the index xored with a lowbias32 hash (codec.wgsl)
// of the step and slot, lane by lane.
fn block_random(index: VU, step: u32, slot: u32) -> V {
    let stream = lowbias32(step * 0x9e3779b9u + slot * 0x632be5abu);
    return V(((index ^ VU(stream)) * 0x9e3779b9u) >> VU(8u)) * 0x1p-24f;
}

// The code of companded position `u` (in code steps), up past `random`, within 0..=top.
fn block_round(u: V, top: f32, random: V) -> V {
    let c = clamp(floor(u), V(0.0), V(top));
    return select(c, c + 1.0, (c < V(top)) & (u - c > random));
}

// Signed codes of `bits` bits: sign(c) * (|c| / top)^2 * s, top = 2^(bits-1) - 1; the code
// -(top + 1) for a non-finite value. `r` is the scale's reciprocal (block_reciprocal).
fn block_signed_code(x: V, r: f32, random: V, bits: u32) -> VU {
    let top = f32((1u << (bits - 1u)) - 1u);
    let c = block_round(top * sqrt(abs(x) * r), top, random);
    let signed = select(VI(c), -VI(c), x < V(0.0));
    let mask = (1u << bits) - 1u;
    return select(bitcast<VU>(signed) & VU(mask), VU(1u << (bits - 1u)), !block_finite(x));
}

// `step` is 1/top rounded to f32.
fn block_signed_value(code: VU, s: f32, bits: u32, step: f32) -> V {
    let c = bitcast<VI>(code << VU(32u - bits)) >> VU(32u - bits);
    let t = V(abs(c)) * step;
    let magnitude = t * t * s;
    let value = select(magnitude, -magnitude, c < VI(0));
    let nan = code == VU(1u << (bits - 1u));
    return bitcast<V>(select(bitcast<VU>(value), VU(0x7fc00000u), nan));
}

// Unsigned codes of `bits` bits: ((c + 1) / levels)^4 * s for c < levels = 2^bits - 2, never
// 0 unless s is; `levels` for +inf (or -inf), `levels + 1` for NaN. A value below the
// smallest code's takes that code.
fn block_unsigned_code(x: V, r: f32, random: V, bits: u32) -> VU {
    let levels = (1u << bits) - 2u;
    let u = f32(levels) * sqrt(sqrt(abs(x) * r));
    let c = block_round(u - 1.0, f32(levels - 1u), random);
    let nan = (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
    let special = select(VU(levels), VU(levels + 1u), nan);
    return select(VU(c), special, !block_finite(x));
}

// `step` is 1/levels rounded to f32.
fn block_unsigned_value(code: VU, s: f32, bits: u32, step: f32) -> V {
    let levels = (1u << bits) - 2u;
    let t = (V(code) + 1.0) * step;
    let q = t * t;
    let value = q * q * s;
    let special = select(VU(0x7f800000u), VU(0x7fc00000u), code == VU(levels + 1u));
    return bitcast<V>(select(bitcast<VU>(value), special, code >= VU(levels)));
}

// The scale of a block whose largest finite magnitude is `m`, kept as the f32 bits above bit
// `shift` (16: a bf16; 23: the exponent byte), rounded up, at most the largest finite one.
fn block_scale_bits(m: f32, shift: u32) -> u32 {
    return min((bitcast<u32>(m) + ((1u << shift) - 1u)) >> shift, 0x7f7fffffu >> shift);
}

fn block_scale_value(raw: u32, shift: u32) -> f32 {
    return bitcast<f32>(raw << shift);
}
