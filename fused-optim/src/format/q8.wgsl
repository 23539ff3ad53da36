// 8-bit block state: the codes and scales of src/format/q8.rs (its twin, function for
// function; the layout and the maps are described there). Over `V` (vec4<f32> or f32) with
// the host's `VU`, `VI` and `VB` of the same width: a vector invocation codes four elements
// at once. No table and no workgroup memory.

// 1/127 and 1/254 rounded to f32 (bits 0x3c010204 and 0x3b810204), exact as hex literals.
const Q8_INV127: f32 = 0x1.020408p-7f;
const Q8_INV254: f32 = 0x1.020408p-8f;

fn q8_finite(x: V) -> VB {
    return (bitcast<VU>(x) & VU(0x7fffffffu)) < VU(0x7f800000u);
}

// |x| where finite, else 0: what a block's scale is the largest of.
fn q8_magnitude(x: V) -> V {
    return select(V(0.0), abs(x), q8_finite(x));
}

// The bf16 bits of the scale of a block whose largest finite magnitude is `m`: rounded up,
// at most bf16's largest finite value.
fn q8_scale_bits(m: f32) -> u32 {
    return min((bitcast<u32>(m) + 0xffffu) >> 16u, 0x7f7fu);
}

fn q8_reciprocal(s: f32) -> f32 {
    return select(1.0 / s, 0.0, s == 0.0);
}

// The random points in [0, 1) at which the codes of elements `index` round up at step `step`
// in slot `slot`: a multiplicative hash of the index xored with a lowbias32 hash (codec.wgsl)
// of the step and slot, lane by lane.
fn q8_random(index: VU, step: u32, slot: u32) -> V {
    let stream = lowbias32(step * 0x9e3779b9u + slot * 0x632be5abu);
    return V(((index ^ VU(stream)) * 0x9e3779b9u) >> VU(8u)) * 0x1p-24f;
}

// The code of companded position `u` (in code steps), up past `random`, within 0..=top.
fn q8_round(u: V, top: f32, random: V) -> V {
    let c = clamp(floor(u), V(0.0), V(top));
    return select(c, c + 1.0, (c < V(top)) & (u - c > random));
}

// Signed codes (bytes): sign(c) * (|c| / 127)^2 * s; 0x80 for a non-finite value. `r` is the
// scale's reciprocal (q8_reciprocal).
fn q8_signed_code(x: V, r: f32, random: V) -> VU {
    let c = q8_round(127.0 * sqrt(abs(x) * r), 127.0, random);
    let signed = select(VI(c), -VI(c), x < V(0.0));
    return select(bitcast<VU>(signed) & VU(0xffu), VU(0x80u), !q8_finite(x));
}

fn q8_signed_value(code: VU, s: f32) -> V {
    let c = bitcast<VI>(code << VU(24u)) >> VU(24u);
    let t = V(abs(c)) * Q8_INV127;
    let magnitude = t * t * s;
    let value = select(magnitude, -magnitude, c < VI(0));
    return bitcast<V>(select(bitcast<VU>(value), VU(0x7fc00000u), code == VU(0x80u)));
}

// Unsigned codes: ((c + 1) / 254)^4 * s for c < 254, never 0 unless s is; 254 for +inf (or
// -inf), 255 for NaN. A value below the smallest code's takes that code.
fn q8_unsigned_code(x: V, r: f32, random: V) -> VU {
    let u = 254.0 * sqrt(sqrt(abs(x) * r));
    let c = q8_round(u - 1.0, 253.0, random);
    let nan = (bitcast<VU>(x) & VU(0x7fffffffu)) > VU(0x7f800000u);
    let special = select(VU(254u), VU(255u), nan);
    return select(VU(c), special, !q8_finite(x));
}

fn q8_unsigned_value(code: VU, s: f32) -> V {
    let t = (V(code) + 1.0) * Q8_INV254;
    let q = t * t;
    let value = q * q * s;
    let special = select(VU(0x7f800000u), VU(0x7fc00000u), code == VU(255u));
    return bitcast<V>(select(bitcast<VU>(value), special, code >= VU(254u)));
}

fn q8_scale_value(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}
