//! The WGSL that binds a kernel's buffers in their storage formats: for one combination of
//! formats and lanes, the bindings, `load_param`, `load_grad`, `load_<slot>`/`store_<slot>` for
//! every state slot the rule declares, and `finish`, which stores the new param (and master)
//! and every kept slot after the rule's `update`. Generated here, between the host's
//! declarations and the prelude, so that a rule's WGSL never names a format and each format is
//! written once (the codecs in codec.wgsl).
//!
//! Lanes: a vector kernel's invocation holds elements `4i..4i+3` of its binding, a scalar one
//! element `i`. A 16-bit buffer packs 2 elements per u32 and 8-bit codes 4, so in a scalar
//! kernel neighbouring invocations share a word: they pass their bits through workgroup memory
//! and the first of each word writes it (`store_word`). 8-bit state needs the absmax of each
//! 256-element block of new values before any can be encoded: a reduction in workgroup memory
//! (`block_absmax`), which is why a window's dispatches start on whole blocks (src/gpu/plan.rs).

use std::fmt::Write;

use super::plan::Lanes;
use crate::format::qmap::QuantMap;
use crate::format::{Dtype, Master, Rounding, StateFormat, BLOCK};

/// The formats one kernel is built for: its group's params, grads, master and rounding, and
/// the format of each state slot (`None` where the group does not keep the slot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelFormats {
    pub params: Dtype,
    pub grads: Dtype,
    pub master: Master,
    pub rounding: Rounding,
    pub slots: Vec<Option<StateFormat>>,
    /// Whether the kernel runs under a grad guard (src/guard.rs): it binds what the guard
    /// resolved on the device and takes its grad factors, skip flag, scalars and seed from it.
    pub guarded: bool,
}

impl KernelFormats {
    fn has_block8(&self) -> bool {
        self.slots.contains(&Some(StateFormat::Block8))
    }

    /// Elements a window's vector dispatch must cover whole, so that no 16-bit pair, vec4 or
    /// 8-bit block is split between two dispatches: 256 with 8-bit state, else 4.
    pub fn quantum(&self) -> u64 {
        if self.has_block8() {
            BLOCK
        } else {
            4
        }
    }

    /// Elements a binding offset must be a multiple of for every buffer to start at a multiple
    /// of `alignment` bytes: f32 buffers need alignment/4 elements, 16-bit ones /2, 8-bit codes
    /// alignment itself and their absmax (4 bytes per 256 elements) 64 times it.
    pub fn alignment_elements(&self, alignment: u64) -> u64 {
        let mut elements = (alignment / 4).max(self.quantum());
        let sixteen_bit = self.params.is_16_bit()
            || self.grads.is_16_bit()
            || self.master == Master::Bf16Remainder
            || self.slots.contains(&Some(StateFormat::Bf16));
        if sixteen_bit {
            elements = elements.max(alignment / 2);
        }
        if self.has_block8() {
            elements = elements.max(alignment * BLOCK / 4);
        }
        elements
    }
}

/// What a binding of a kernel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Params,
    Grads,
    /// The f32 master or the bf16 remainder.
    Master,
    /// The quantization maps of 8-bit state: signed values, signed midpoints, unsigned values,
    /// unsigned midpoints, 256 f32 each.
    QuantMaps,
    /// A state slot's values (8-bit codes for 8-bit state).
    Slot(usize),
    /// The per-block absmax of an 8-bit slot.
    Absmax(usize),
    /// The grad guard's factors and skip flag of the step, in a uniform.
    GuardResolved,
    /// The rule's scalars of the group for the device's step count, in a uniform.
    GuardScalars,
}

impl Role {
    pub fn binding(self) -> u32 {
        match self {
            Role::Params => 1,
            Role::Grads => 2,
            Role::Master => 3,
            Role::QuantMaps => 4,
            Role::GuardResolved => 5,
            Role::GuardScalars => 6,
            Role::Slot(slot) => 8 + 2 * slot as u32,
            Role::Absmax(slot) => 9 + 2 * slot as u32,
        }
    }

    pub fn read_only(self) -> bool {
        matches!(self, Role::Grads | Role::QuantMaps)
    }

    /// Whether the binding is a uniform rather than a storage buffer.
    pub fn uniform(self) -> bool {
        matches!(self, Role::GuardResolved | Role::GuardScalars)
    }
}

/// The bindings of a kernel with `formats`, in binding order.
pub(crate) fn roles(formats: &KernelFormats) -> Vec<Role> {
    let mut roles = vec![Role::Params, Role::Grads];
    if formats.master != Master::None {
        roles.push(Role::Master);
    }
    if formats.has_block8() {
        roles.push(Role::QuantMaps);
    }
    if formats.guarded {
        roles.extend([Role::GuardResolved, Role::GuardScalars]);
    }
    for (slot, format) in formats.slots.iter().enumerate() {
        match format {
            Some(StateFormat::Block8) => roles.extend([Role::Slot(slot), Role::Absmax(slot)]),
            Some(_) => roles.push(Role::Slot(slot)),
            None => {}
        }
    }
    roles
}

/// The maps' buffer contents, as [`Role::QuantMaps`] lays them out.
pub(crate) fn quant_map_words() -> Vec<f32> {
    let (signed, unsigned) = (QuantMap::signed(), QuantMap::unsigned());
    [
        signed.values,
        signed.midpoints,
        unsigned.values,
        unsigned.midpoints,
    ]
    .concat()
}

/// How the elements of one buffer are stored, for the generator.
#[derive(Clone, Copy, PartialEq)]
enum Storage {
    F32,
    Half(Dtype),
    Codes,
}

struct Generator<'a> {
    lanes: Lanes,
    out: String,
    /// Statements of `finish`, in order.
    finish: String,
    formats: &'a KernelFormats,
}

impl Generator<'_> {
    fn vector(&self) -> bool {
        self.lanes == Lanes::Vector
    }

    fn declare(&mut self, role: Role, name: &str, storage: Storage) {
        let element = match (storage, self.vector()) {
            (Storage::F32, true) => "vec4<f32>",
            (Storage::F32, false) => "f32",
            (Storage::Half(_), true) => "vec2<u32>",
            (Storage::Half(_) | Storage::Codes, _) => "u32",
        };
        let access = if role.read_only() {
            "read"
        } else {
            "read_write"
        };
        writeln!(
            self.out,
            "@group(0) @binding({}) var<storage, {access}> {name}: array<{element}>;",
            role.binding()
        )
        .unwrap();
    }

    /// A WGSL expression for the f32 value of 16-bit `bits` (an expression) in `dtype`.
    fn decode(dtype: Dtype, bits: &str) -> String {
        match dtype {
            Dtype::F16 => format!("f16_value({bits})"),
            _ => format!("bf16_value({bits})"),
        }
    }

    /// The 16-bit halves of `name` at item `i`, as an expression per lane.
    fn halves(&self, name: &str) -> Vec<String> {
        match self.vector() {
            true => vec![
                format!("({name}[i].x & 0xffffu)"),
                format!("({name}[i].x >> 16u)"),
                format!("({name}[i].y & 0xffffu)"),
                format!("({name}[i].y >> 16u)"),
            ],
            false => vec![format!("(({name}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu)")],
        }
    }

    /// An expression building `V` from one expression per lane.
    fn v_of(&self, lanes: &[String]) -> String {
        match self.vector() {
            true => format!("vec4<f32>({})", lanes.join(", ")),
            false => lanes[0].clone(),
        }
    }

    /// Lane `lane` of a `V` expression.
    fn lane(&self, v: &str, lane: usize) -> String {
        match self.vector() {
            true => format!("{v}.{}", ["x", "y", "z", "w"][lane]),
            false => v.to_owned(),
        }
    }

    /// The element index within the target of lane `lane` (for stochastic rounding).
    fn element_index(&self, lane: usize) -> String {
        match self.vector() {
            true => format!("step.origin + i * 4u + {lane}u"),
            false => "step.origin + i".to_owned(),
        }
    }

    /// Statements storing 16-bit (or 8-bit) `bits`, one u32 expression per lane, into
    /// `name` at item `i`: one word write per vector invocation, or `store_word` in scalar
    /// kernels.
    fn store_small(&mut self, name: &str, bits: &[String], per_word: u32) {
        if self.vector() {
            let width = 32 / per_word;
            let word = |lanes: &[String]| {
                lanes
                    .iter()
                    .enumerate()
                    .map(|(k, b)| match k {
                        0 => b.clone(),
                        _ => format!("({b} << {}u)", k as u32 * width),
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let value = match per_word {
                2 => format!("vec2<u32>({}, {})", word(&bits[..2]), word(&bits[2..])),
                _ => word(bits),
            };
            writeln!(self.finish, "    if live {{ {name}[i] = {value}; }}").unwrap();
        } else {
            writeln!(
                self.finish,
                "    store_word_{name}(i, local, live, select(0u, {}, live));",
                bits[0]
            )
            .unwrap();
            let width = 32 / per_word;
            let mask = (1u64 << width) - 1;
            writeln!(
                self.out,
                "fn store_word_{name}(i: u32, local: u32, live: bool, bits: u32) {{\n\
                 \x20   workgroupBarrier();\n\
                 \x20   pack_scratch[local] = bits << ((i % {per_word}u) * {width}u);\n\
                 \x20   workgroupBarrier();\n\
                 \x20   if live && i % {per_word}u == 0u {{\n\
                 \x20       var word = 0u;\n\
                 \x20       var keep = 0xffffffffu;\n\
                 \x20       for (var k = 0u; k < {per_word}u; k++) {{\n\
                 \x20           if i + k < step.end {{\n\
                 \x20               word = word | pack_scratch[local + k];\n\
                 \x20               keep = keep & ~({mask}u << (k * {width}u));\n\
                 \x20           }}\n\
                 \x20       }}\n\
                 \x20       {name}[i / {per_word}u] = word | ({name}[i / {per_word}u] & keep);\n\
                 \x20   }}\n\
                 }}"
            )
            .unwrap();
        }
    }

    fn params(&mut self) {
        let f = self.formats;
        match f.params {
            Dtype::F32 => {
                self.declare(Role::Params, "param", Storage::F32);
                writeln!(self.finish, "    if live {{ param[i] = p; }}").unwrap();
            }
            dtype => {
                self.declare(Role::Params, "param", Storage::Half(dtype));
                let width = if self.vector() { 4 } else { 1 };
                let encode = |g: &Self, lane: usize| {
                    let x = g.lane("p", lane);
                    match (f.master, f.rounding, dtype) {
                        (Master::Bf16Remainder, _, _) => format!("split_remainder({x}).x"),
                        (Master::None, Rounding::Stochastic, Dtype::F16) => format!(
                            "f16_round({x}, random_bits({}, seed()), true)",
                            g.element_index(lane)
                        ),
                        (Master::None, Rounding::Stochastic, _) => format!(
                            "bf16_stochastic({x}, random_bits({}, seed()))",
                            g.element_index(lane)
                        ),
                        (_, _, Dtype::F16) => format!("f16_round({x}, 0u, false)"),
                        _ => format!("bf16_nearest({x})"),
                    }
                };
                let bits: Vec<String> = (0..width).map(|lane| encode(self, lane)).collect();
                self.store_small("param", &bits, 2);
            }
        }
        let halves = self.halves("param");
        let load = match (f.params, f.master) {
            (Dtype::F32, _) => "param[i]".to_owned(),
            // The master starts as the params: on the first step it is read from them.
            (dtype, Master::F32) => {
                let lanes: Vec<String> = halves.iter().map(|h| Self::decode(dtype, h)).collect();
                format!("select(master[i], {}, seed() == 1u)", self.v_of(&lanes))
            }
            (dtype, Master::None) => {
                let lanes: Vec<String> = halves.iter().map(|h| Self::decode(dtype, h)).collect();
                self.v_of(&lanes)
            }
            (_, Master::Bf16Remainder) => {
                let remainders = self.halves("master");
                let lanes: Vec<String> = halves
                    .iter()
                    .zip(&remainders)
                    .map(|(p, r)| format!("join_remainder({p}, {r})"))
                    .collect();
                self.v_of(&lanes)
            }
        };
        writeln!(self.out, "fn load_param(i: u32) -> V {{ return {load}; }}").unwrap();
        match f.master {
            Master::None => {}
            Master::F32 => {
                self.declare(Role::Master, "master", Storage::F32);
                writeln!(self.finish, "    if live {{ master[i] = p; }}").unwrap();
            }
            Master::Bf16Remainder => {
                self.declare(Role::Master, "master", Storage::Half(Dtype::Bf16));
                let width = if self.vector() { 4 } else { 1 };
                let bits: Vec<String> = (0..width)
                    .map(|lane| format!("split_remainder({}).y", self.lane("p", lane)))
                    .collect();
                self.store_small("master", &bits, 2);
            }
        }
    }

    /// The guard's hooks the prelude calls (see its header), or their pass-through forms.
    fn guard(&mut self) {
        if !self.formats.guarded {
            writeln!(
                self.out,
                "fn scalars() -> Scalars {{ return step.s; }}\n\
                 fn seed() -> u32 {{ return step.seed; }}\n\
                 fn guard_live(live: bool) -> bool {{ return live; }}\n\
                 fn guard_grad(g: V) -> V {{ return g; }}"
            )
            .unwrap();
            return;
        }
        let (bits, nan) = match self.vector() {
            true => ("vec4<u32>", "vec4<u32>(0x7f800000u)"),
            false => ("u32", "0x7f800000u"),
        };
        writeln!(
            self.out,
            "// The grad guard's values of the step, resolved on the device (src/gpu/guard.rs).\n\
             struct GuardResolved {{\n\
             \x20   inv_scale: f32, clip_coef: f32, clip_value: f32, skip: u32, t: u32,\n\
             \x20   pad0: u32, pad1: u32, pad2: u32,\n\
             }}\n\
             @group(0) @binding({}) var<uniform> guard: GuardResolved;\n\
             // The group's scalars for the step count the device holds.\n\
             @group(0) @binding({}) var<uniform> guard_scalars: Scalars;\n\
             fn scalars() -> Scalars {{ return guard_scalars; }}\n\
             fn seed() -> u32 {{ return guard.t; }}\n\
             fn guard_live(live: bool) -> bool {{ return live && guard.skip == 0u; }}\n\
             // Unscale, clamp (a NaN stays NaN), then the clipping coefficient: GradStep::grad.\n\
             fn guard_grad(g: V) -> V {{\n\
             \x20   let x = g * guard.inv_scale;\n\
             \x20   let c = guard.clip_value;\n\
             \x20   let nan = (bitcast<{bits}>(x) & {bits}(0x7fffffffu)) > {nan};\n\
             \x20   return select(max(min(x, V(c)), V(-c)), x, nan) * guard.clip_coef;\n\
             }}",
            Role::GuardResolved.binding(),
            Role::GuardScalars.binding()
        )
        .unwrap();
    }

    fn grads(&mut self) {
        let load = match self.formats.grads {
            Dtype::F32 => {
                self.declare(Role::Grads, "grad", Storage::F32);
                "grad[i]".to_owned()
            }
            dtype => {
                self.declare(Role::Grads, "grad", Storage::Half(dtype));
                let lanes: Vec<String> = self
                    .halves("grad")
                    .iter()
                    .map(|h| Self::decode(dtype, h))
                    .collect();
                self.v_of(&lanes)
            }
        };
        writeln!(self.out, "fn load_grad(i: u32) -> V {{ return {load}; }}").unwrap();
    }

    fn slot(&mut self, slot: usize, name: &str, non_negative: bool) {
        let Some(format) = self.formats.slots[slot] else {
            // Not kept by this configuration: the rule's code for it is behind a flag that is
            // off, but must still compile.
            writeln!(
                self.out,
                "fn load_{name}(i: u32) -> V {{ return V(0.0); }}\n\
                 fn store_{name}(i: u32, v: V) {{}}"
            )
            .unwrap();
            return;
        };
        let role = Role::Slot(slot);
        writeln!(
            self.out,
            "var<private> next_{name}: V;\n\
             fn store_{name}(i: u32, v: V) {{ next_{name} = v; }}"
        )
        .unwrap();
        let width = if self.vector() { 4 } else { 1 };
        let next = format!("next_{name}");
        let load = match format {
            StateFormat::F32 => {
                self.declare(role, name, Storage::F32);
                writeln!(self.finish, "    if live {{ {name}[i] = {next}; }}").unwrap();
                format!("{name}[i]")
            }
            StateFormat::Bf16 => {
                self.declare(role, name, Storage::Half(Dtype::Bf16));
                let bits: Vec<String> = (0..width)
                    .map(|lane| format!("bf16_nearest({})", self.lane(&next, lane)))
                    .collect();
                self.store_small(name, &bits, 2);
                let lanes: Vec<String> = self
                    .halves(name)
                    .iter()
                    .map(|h| Self::decode(Dtype::Bf16, h))
                    .collect();
                self.v_of(&lanes)
            }
            StateFormat::Block8 => {
                self.declare(role, name, Storage::Codes);
                writeln!(
                    self.out,
                    "@group(0) @binding({}) var<storage, read_write> {name}_absmax: array<f32>;",
                    Role::Absmax(slot).binding()
                )
                .unwrap();
                let (map, zero) = match non_negative {
                    true => (512, QuantMap::unsigned().zero_code()),
                    false => (0, QuantMap::signed().zero_code()),
                };
                let magnitude = match self.vector() {
                    true => format!(
                        "max(max(abs({next}.x), abs({next}.y)), max(abs({next}.z), abs({next}.w)))"
                    ),
                    false => format!("abs({next})"),
                };
                writeln!(
                    self.finish,
                    "    let absmax_{name} = block_absmax(local, select(0.0, {magnitude}, live));\n\
                     \x20   if live && i % BLOCK_ITEMS == 0u {{ {name}_absmax[i / BLOCK_ITEMS] = absmax_{name}; }}"
                )
                .unwrap();
                let bits: Vec<String> = (0..width)
                    .map(|lane| {
                        format!(
                            "quantize({}, absmax_{name}, {map}u, {zero}u)",
                            self.lane(&next, lane)
                        )
                    })
                    .collect();
                self.store_small(name, &bits, 4);
                let codes: Vec<String> = match self.vector() {
                    true => (0..4)
                        .map(|k| format!("(({name}[i] >> {}u) & 0xffu)", 8 * k))
                        .collect(),
                    false => vec![format!("(({name}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu)")],
                };
                let lanes: Vec<String> = codes
                    .iter()
                    .map(|c| format!("qmap[{map}u + {c}] * {name}_absmax[i / BLOCK_ITEMS]"))
                    .collect();
                self.v_of(&lanes)
            }
        };
        writeln!(self.out, "fn load_{name}(i: u32) -> V {{ return {load}; }}").unwrap();
    }
}

/// The generated WGSL for a rule whose state slots are `slots` (name, never negative), stored
/// in `formats`, in `lanes`: bindings, accessors and `finish`.
pub(crate) fn accessors(slots: &[(&str, bool)], formats: &KernelFormats, lanes: Lanes) -> String {
    let mut generator = Generator {
        lanes,
        out: String::new(),
        finish: String::new(),
        formats,
    };
    let block_items = BLOCK / lanes.width();
    writeln!(
        generator.out,
        "// Generated by src/gpu/glue.rs for {formats:?}.\n\
         const BLOCK_ITEMS: u32 = {block_items}u;\n\
         var<workgroup> pack_scratch: array<u32, 256>;\n\
         var<workgroup> absmax_scratch: array<f32, 256>;"
    )
    .unwrap();
    generator.guard();
    generator.params();
    generator.grads();
    if formats.has_block8() {
        writeln!(
            generator.out,
            "@group(0) @binding({}) var<storage, read> qmaps: array<f32>;\n\
             var<workgroup> qmap: array<f32, 1024>;\n\
             var<workgroup> absmax_partial: array<f32, 256>;\n\
             {QUANTIZE}",
            Role::QuantMaps.binding()
        )
        .unwrap();
    } else {
        writeln!(generator.out, "fn setup(local: u32) {{}}").unwrap();
    }
    for (slot, (name, non_negative)) in slots.iter().enumerate() {
        generator.slot(slot, name, *non_negative);
    }
    let Generator {
        mut out, finish, ..
    } = generator;
    writeln!(
        out,
        "fn finish(i: u32, local: u32, live: bool, p: V) {{\n{finish}}}"
    )
    .unwrap();
    out
}

/// Block reduction and encoding of 8-bit state (only in kernels that have some).
const QUANTIZE: &str = "\
// The largest of `value` over the BLOCK_ITEMS invocations of this invocation's 256-element
// block. Called in uniform control flow by every invocation of the workgroup. Two barriers:
// eight invocations of the block fold eight values each, then every invocation folds those
// eight (max is exact, so the order changes nothing).
fn block_absmax(local: u32, value: f32) -> f32 {
    workgroupBarrier();
    absmax_scratch[local] = value;
    workgroupBarrier();
    let first = local - local % BLOCK_ITEMS;
    let part = BLOCK_ITEMS / 8u;
    if local % BLOCK_ITEMS < 8u {
        let start = first + (local % BLOCK_ITEMS) * part;
        var m = absmax_scratch[start];
        for (var k = 1u; k < part; k++) {
            m = max(m, absmax_scratch[start + k]);
        }
        absmax_partial[local] = m;
    }
    workgroupBarrier();
    var m = absmax_partial[first];
    for (var k = 1u; k < 8u; k++) {
        m = max(m, absmax_partial[first + k]);
    }
    return m;
}

// Every invocation copies its share of the quantization maps into workgroup memory, where
// decoding and the encoder's binary search read them.
fn setup(local: u32) {
    for (var k = local; k < 1024u; k += WORKGROUP_SIZE) {
        qmap[k] = qmaps[k];
    }
    workgroupBarrier();
}

// The code of `v` in a block of `absmax` through the map at `map` (0 signed, 512 unsigned):
// how many of its midpoints, times absmax, lie below v (src/format/qmap.rs: QuantMap::code).
// A guess from the map's construction (decade d holds 2^d codes of each sign, or 2^(d+1)
// non-negative ones, evenly over [0.1, 1] * 10^(d-6)) is kept, or moved by one code, only
// where the midpoint comparisons confirm it; otherwise a binary search finds the code. The
// guess may round any way (log2, exp2 and the division are approximate on GPUs): only the
// comparisons, exact, decide.
fn midpoint(map: u32, code: u32, absmax: f32) -> f32 {
    if code >= 255u {
        return bitcast<f32>(0x7f800000u);
    }
    return qmap[map + 256u + code] * absmax;
}

fn quantize(v: f32, absmax: f32, map: u32, zero: u32) -> u32 {
    if absmax == 0.0 {
        return zero;
    }
    let x = max(abs(v) / absmax, 1e-8);
    let d = u32(clamp(floor(log2(x) * 0.30103) + 7.0, 0.0, 6.0));
    let fraction = x * exp2((6.0 - f32(d)) * 3.321928);
    let unsigned = map == 512u;
    let count = select(1u << d, 2u << d, unsigned);
    let k = u32(clamp(floor((fraction - 0.1) / 0.9 * f32(count)), 0.0, f32(count - 1u)));
    var code = (2u << d) - 1u + k;
    if !unsigned {
        let rank = (1u << d) - 1u + k;
        code = select(126u - rank, 128u + rank, v >= 0.0);
    }
    // The guess is nearly always within one code of the answer; the comparisons confirm it,
    // else the binary search below decides.
    let below = select(bitcast<f32>(0xff800000u), midpoint(map, code - 1u, absmax), code > 0u);
    let above = midpoint(map, code, absmax);
    if v > below && v <= above {
        return code;
    }
    if v > above && v <= midpoint(map, code + 1u, absmax) {
        return code + 1u;
    }
    if v <= below && code > 0u && (code == 1u || v > midpoint(map, code - 2u, absmax)) {
        return code - 1u;
    }
    code = 0u;
    for (var step = 128u; step > 0u; step = step / 2u) {
        if v > midpoint(map, code + step - 1u, absmax) {
            code = code + step;
        }
    }
    return code;
}";
