//! The WGSL that binds a kernel's buffers in their storage formats: for one combination of
//! formats and lanes, the bindings, `load_param`, `load_grad`, `load_<slot>`/`store_<slot>` for
//! every state slot the rule declares, `finish`, which stores an item's new param (and master)
//! and its element-wise slots after the rule's `update`, and `begin_items`/`end_items` around
//! an invocation's items, which read and write the block-wise slots. Generated here, between
//! the host's declarations and the prelude, so that a rule's WGSL never names a format and
//! each format's codec is written once (src/format/codec.wgsl and block.wgsl). The glue reads
//! a state format's `Layout` (a dtype, or a block code's width and scale), never its name.
//!
//! Items: a vector kernel's item holds elements `4i..4i+3` of its binding, a scalar one
//! element `i`. Each invocation updates `ITEMS` consecutive items: one vec4, or a tail's up
//! to three elements; with 8-bit state, a whole block of 32 elements (8 vec4s, or a tail's
//! elements one by one), so the block's scale is a reduction in registers, with no barrier
//! and no workgroup memory. An invocation therefore owns every word it writes (16-bit pairs,
//! 8-bit quads) except a block's bf16 scale, which shares its word with the next block's and
//! is written with atomics.

use std::fmt::Write;

use super::plan::Lanes;
use crate::format::block::BlockFormat;
use crate::format::{Dtype, Layout, Master, Rounding, StateFormat, BLOCK};

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
    /// Whether some slot is stored in blocks (8-bit or 4-bit codes with a scale per block).
    fn has_blocks(&self) -> bool {
        self.slots
            .iter()
            .any(|format| format.is_some_and(|f| f.blocks().is_some()))
    }

    /// Elements one invocation updates, and that a window's vector dispatch must cover whole
    /// so that no 16-bit pair, vec4 or 8-bit block is split between two dispatches: a block
    /// with 8-bit state, else 4.
    pub fn quantum(&self) -> u64 {
        if self.has_blocks() {
            BLOCK
        } else {
            4
        }
    }

    /// Items of `lanes` one invocation updates.
    pub fn items(&self, lanes: Lanes) -> u64 {
        self.quantum() / lanes.width()
    }

    /// Elements a binding offset must be a multiple of for every buffer to start at a multiple
    /// of `alignment` bytes: f32 buffers need alignment/4 elements, 16-bit ones /2, 8-bit codes
    /// alignment itself and their scales (2 bytes per block) BLOCK/2 times it.
    pub fn alignment_elements(&self, alignment: u64) -> u64 {
        let mut elements = (alignment / 4).max(self.quantum());
        if self.master == Master::Bf16Correction {
            elements = elements.max(alignment);
        }
        let sixteen_bit = self.params.is_16_bit()
            || self.grads.is_16_bit()
            || self.master == Master::Bf16Remainder
            || self.slots.iter().flatten().any(|f| f.bits() == 16);
        if sixteen_bit {
            elements = elements.max(alignment / 2);
        }
        for format in self.slots.iter().flatten().filter_map(|f| f.blocks()) {
            elements = elements
                .max(alignment * 8 / format.code.bits as u64)
                .max(alignment * BLOCK / format.scale_bytes());
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
    /// A state slot's values (8-bit codes for 8-bit state).
    Slot(usize),
    /// The bf16 scales of an 8-bit slot's blocks, two per word.
    Scales(usize),
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
            Role::GuardResolved => 5,
            Role::GuardScalars => 6,
            Role::Slot(slot) => 8 + 2 * slot as u32,
            Role::Scales(slot) => 9 + 2 * slot as u32,
        }
    }

    pub fn read_only(self) -> bool {
        matches!(self, Role::Grads)
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
    if formats.guarded {
        roles.extend([Role::GuardResolved, Role::GuardScalars]);
    }
    for (slot, format) in formats.slots.iter().enumerate() {
        match format {
            Some(format) if format.blocks().is_some() => {
                roles.extend([Role::Slot(slot), Role::Scales(slot)])
            }
            Some(_) => roles.push(Role::Slot(slot)),
            None => {}
        }
    }
    roles
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
    /// Statements of `begin_items` and `end_items`, in order.
    begin: String,
    end: String,
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

    /// A WGSL expression for the 16-bit bits of f32 `x` (an expression) in `dtype`, rounded
    /// to nearest, ties to even.
    fn nearest(dtype: Dtype, x: &str) -> String {
        match dtype {
            Dtype::F16 => format!("f16_round({x}, 0u, false)"),
            _ => format!("bf16_nearest({x})"),
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

    /// A statement storing 16-bit (or 8-bit) `bits`, one u32 expression per lane, into
    /// `name` at item `i`: a whole word (or pair) per vector item, or in a scalar kernel the
    /// element's part of its word, which no other invocation writes.
    fn store_small(&self, name: &str, bits: &[String], per_word: u32) -> String {
        let width = 32 / per_word;
        if self.vector() {
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
            format!("    {name}[i] = {value};\n")
        } else {
            let mask = (1u64 << width) - 1;
            format!(
                "    {{\n\
                 \x20       let shift = (i % {per_word}u) * {width}u;\n\
                 \x20       let kept = {name}[i / {per_word}u] & ~({mask}u << shift);\n\
                 \x20       {name}[i / {per_word}u] = kept | ({} << shift);\n\
                 \x20   }}\n",
                bits[0]
            )
        }
    }

    fn params(&mut self) {
        let f = self.formats;
        match f.params {
            Dtype::F32 => {
                self.declare(Role::Params, "param", Storage::F32);
                writeln!(self.finish, "    param[i] = p;").unwrap();
            }
            dtype => {
                self.declare(Role::Params, "param", Storage::Half(dtype));
                let width = if self.vector() { 4 } else { 1 };
                let encode = |g: &Self, lane: usize| {
                    let x = g.lane("p", lane);
                    match (f.master, f.rounding, dtype) {
                        (Master::Bf16Remainder, _, _) => format!("split_remainder({x}).x"),
                        (Master::Bf16Correction, _, _) => {
                            format!("split_correction({x}, {}, seed()).x", g.element_index(lane))
                        }
                        (Master::None, Rounding::Stochastic, Dtype::F16) => format!(
                            "f16_round({x}, random_bits({}, seed()), true)",
                            g.element_index(lane)
                        ),
                        (Master::None, Rounding::Stochastic, _) => format!(
                            "bf16_stochastic({x}, random_bits({}, seed()))",
                            g.element_index(lane)
                        ),
                        _ => Self::nearest(dtype, &x),
                    }
                };
                let bits: Vec<String> = (0..width).map(|lane| encode(self, lane)).collect();
                let store = self.store_small("param", &bits, 2);
                self.finish.push_str(&store);
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
            (_, Master::Bf16Correction) => {
                let lanes: Vec<String> = halves
                    .iter()
                    .zip(self.bytes("master"))
                    .map(|(p, c)| format!("join_correction({p}, {c})"))
                    .collect();
                self.v_of(&lanes)
            }
        };
        writeln!(self.out, "fn load_param(i: u32) -> V {{ return {load}; }}").unwrap();
        match f.master {
            Master::None => {}
            Master::F32 => {
                self.declare(Role::Master, "master", Storage::F32);
                writeln!(self.finish, "    master[i] = p;").unwrap();
            }
            Master::Bf16Remainder => {
                self.declare(Role::Master, "master", Storage::Half(Dtype::Bf16));
                let width = if self.vector() { 4 } else { 1 };
                let bits: Vec<String> = (0..width)
                    .map(|lane| format!("split_remainder({}).y", self.lane("p", lane)))
                    .collect();
                let store = self.store_small("master", &bits, 2);
                self.finish.push_str(&store);
            }
            Master::Bf16Correction => {
                self.declare(Role::Master, "master", Storage::Codes);
                let width = if self.vector() { 4 } else { 1 };
                let bits: Vec<String> = (0..width)
                    .map(|lane| {
                        format!(
                            "split_correction({}, {}, seed()).y",
                            self.lane("p", lane),
                            self.element_index(lane)
                        )
                    })
                    .collect();
                let store = self.store_small("master", &bits, 4);
                self.finish.push_str(&store);
            }
        }
    }

    /// The bytes of `name` (one u32 per four elements) at item `i`, as an expression per lane.
    fn bytes(&self, name: &str) -> Vec<String> {
        match self.vector() {
            true => (0..4)
                .map(|k| format!("(({name}[i] >> {}u) & 0xffu)", 8 * k))
                .collect(),
            false => vec![format!("(({name}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu)")],
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

    /// The accessors of state slot `slot` (`name` in the rule's WGSL, never negative where
    /// `non_negative`) in its format: `load_<name>` and `store_<name>`, and for a block-wise
    /// slot the statements of `begin_items` and `end_items`.
    fn slot(&mut self, slot: usize, name: &str, non_negative: bool) {
        let Some(format) = self.formats.slots[slot] else {
            self.unkept_slot(name);
            return;
        };
        let load = match format.layout() {
            Layout::Elements(dtype) => self.element_slot(Role::Slot(slot), name, dtype),
            Layout::Blocks(block) => {
                self.block_slot(&BlockSlot::new(slot, name, non_negative, block))
            }
        };
        writeln!(self.out, "fn load_{name}(i: u32) -> V {{ return {load}; }}").unwrap();
    }

    /// Stubs for a slot this configuration does not keep: the rule's code for it is behind a
    /// flag that is off, but must still compile.
    fn unkept_slot(&mut self, name: &str) {
        writeln!(
            self.out,
            "fn load_{name}(i: u32) -> V {{ return V(0.0); }}\n\
             fn store_{name}(i: u32, v: V) {{}}"
        )
        .unwrap();
    }

    /// An element-wise slot stored as `dtype`: `store_<name>` keeps the new value in a private
    /// variable, which `finish` writes (rounded to nearest in a 16-bit format). Returns the
    /// load's expression.
    fn element_slot(&mut self, role: Role, name: &str, dtype: Dtype) -> String {
        let next = format!("next_{name}");
        writeln!(
            self.out,
            "var<private> {next}: V;\n\
             fn store_{name}(i: u32, v: V) {{ {next} = v; }}"
        )
        .unwrap();
        if dtype == Dtype::F32 {
            self.declare(role, name, Storage::F32);
            writeln!(self.finish, "    {name}[i] = {next};").unwrap();
            return format!("{name}[i]");
        }
        self.declare(role, name, Storage::Half(dtype));
        let width = if self.vector() { 4 } else { 1 };
        let bits: Vec<String> = (0..width)
            .map(|lane| Self::nearest(dtype, &self.lane(&next, lane)))
            .collect();
        let store = self.store_small(name, &bits, 2);
        self.finish.push_str(&store);
        let lanes: Vec<String> = self
            .halves(name)
            .iter()
            .map(|h| Self::decode(dtype, h))
            .collect();
        self.v_of(&lanes)
    }

    /// A block-wise slot: its codes and scales, the new values of the invocation's items kept
    /// until `end_items` codes them, and the block's scale read in `begin_items`. Returns the
    /// load's expression.
    fn block_slot(&mut self, coded: &BlockSlot) -> String {
        self.declare(Role::Slot(coded.slot), coded.name, Storage::Codes);
        self.declare_block_values(coded);
        self.begin_block(coded);
        self.end_block(coded);
        self.block_load(coded)
    }

    /// The scales' binding, where the items' new values wait, `store_<name>` and the block's
    /// scale. A vector kernel keeps each item's new value in a variable of its own and
    /// unrolls the loops over them: an array indexed by the item would live in memory on CPU
    /// adapters (lavapipe) rather than in registers. A scalar tail, 32 items of one element,
    /// keeps an array.
    fn declare_block_values(&mut self, coded: &BlockSlot) {
        let (name, next) = (coded.name, coded.next());
        let items = self.formats.items(self.lanes);
        let (variables, store) = match self.vector() {
            true => {
                let variables: String = (0..items)
                    .map(|k| format!("var<private> {next}_{k}: V;\n"))
                    .collect();
                let cases: String = (0..items)
                    .map(|k| format!("        case {k}u: {{ {next}_{k} = v; }}\n"))
                    .collect();
                let store = format!("    switch item_k {{\n{cases}        default: {{}}\n    }}\n");
                (variables, store)
            }
            false => (
                format!("var<private> {next}: array<V, ITEMS>;\n"),
                format!("    {next}[item_k] = v;\n"),
            ),
        };
        writeln!(
            self.out,
            "@group(0) @binding({}) var<storage, read_write> {name}_scale: array<atomic<u32>>;\n\
             // The new values of the invocation's items, coded once all are known.\n\
             {variables}\
             var<private> scale_{name}: f32;\n\
             fn store_{name}(i: u32, v: V) {{\n{store}}}",
            Role::Scales(coded.slot).binding()
        )
        .unwrap();
    }

    /// `begin_items`' read of the block's scale.
    fn begin_block(&mut self, coded: &BlockSlot) {
        let BlockSlot {
            name,
            scales_per_word,
            scale_width,
            scale_mask,
            ..
        } = *coded;
        writeln!(
            self.begin,
            "    scale_{name} = block_scale_value((atomicLoad(&{name}_scale[block / \
             {scales_per_word}u]) >> ((block % {scales_per_word}u) * {scale_width}u)) & \
             {scale_mask}u, {}u);",
            coded.block.scale_shift
        )
        .unwrap();
    }

    /// `end_items`' coding of the block: its scale from the largest new value, written with
    /// atomics (it may share its word with the next block's), then each item's codes.
    fn end_block(&mut self, coded: &BlockSlot) {
        let BlockSlot {
            slot,
            name,
            kind,
            bits,
            scales_per_word,
            scale_width,
            scale_mask,
            ..
        } = *coded;
        let shift = coded.block.scale_shift;
        let store = self.store_codes(coded);
        let index = match self.vector() {
            true => "VU(step.origin + i * 4u) + vec4<u32>(0u, 1u, 2u, 3u)",
            false => "step.origin + i",
        };
        let next = coded.next();
        let largest = self.every_item(&next, &|value, k| {
            format!(
                "        if guard_live(first + {k} < step.end) {{ \
                 m = max(m, lanes_max(block_magnitude({value}))); }}\n"
            )
        });
        let codes = self.every_item(&next, &|value, k| {
            format!(
                "        if guard_live(first + {k} < step.end) {{\n\
                 \x20           let i = first + {k};\n\
                 \x20           let random = block_random({index}, seed(), {slot}u);\n\
                 \x20           let codes = block_{kind}_code({value}, r, random, {bits}u);\n\
                 {store}\
                 \x20       }}\n"
            )
        });
        write!(
            self.end,
            "    if guard_live(first < step.end) {{\n\
             \x20       var m = 0.0;\n\
             {largest}\
             \x20       let bits = block_scale_bits(m, {shift}u);\n\
             \x20       let word = block / {scales_per_word}u;\n\
             \x20       let shift = (block % {scales_per_word}u) * {scale_width}u;\n\
             \x20       atomicAnd(&{name}_scale[word], ~({scale_mask}u << shift));\n\
             \x20       atomicOr(&{name}_scale[word], bits << shift);\n\
             \x20       let r = block_reciprocal(block_scale_value(bits, {shift}u));\n\
             {codes}\
             \x20   }}\n"
        )
        .unwrap();
    }

    /// Statements over every item of the invocation: `each(value, k)` with the item's new
    /// value (in `next`) and its index among the items, as expressions; unrolled in a vector
    /// kernel (see [`Self::declare_block_values`]).
    fn every_item(&self, next: &str, each: &dyn Fn(&str, &str) -> String) -> String {
        match self.vector() {
            true => (0..self.formats.items(self.lanes))
                .map(|k| each(&format!("{next}_{k}"), &format!("{k}u")))
                .collect(),
            false => format!(
                "        for (var k = 0u; k < ITEMS; k++) {{\n{}        }}\n",
                each(&format!("{next}[k]"), "k")
            ),
        }
    }

    /// The statement storing item `i`'s `codes`: a vector item's four codes are a whole word
    /// at 8 bits; narrower, they are part of a word (half at 4 bits) that no other invocation
    /// writes.
    fn store_codes(&self, coded: &BlockSlot) -> String {
        let BlockSlot {
            name,
            bits,
            items_per_word,
            item_bits,
            ..
        } = *coded;
        if self.vector() && items_per_word > 1 {
            return format!(
                "            {{\n\
                 \x20               let shift = (i % {items_per_word}u) * {item_bits}u;\n\
                 \x20               let packed = codes.x | (codes.y << {bits}u) | (codes.z << {}u) | (codes.w << {}u);\n\
                 \x20               let kept = {name}[i / {items_per_word}u] & ~({:#x}u << shift);\n\
                 \x20               {name}[i / {items_per_word}u] = kept | (packed << shift);\n\
                 \x20           }}\n",
                2 * bits,
                3 * bits,
                (1u64 << item_bits) - 1
            );
        }
        let width = if self.vector() { 4 } else { 1 };
        let codes: Vec<String> = (0..width).map(|lane| self.lane("codes", lane)).collect();
        self.store_small(name, &codes, (32 / bits) as u32)
    }

    /// The load's expression: item `i`'s codes decoded with the block's scale.
    fn block_load(&self, coded: &BlockSlot) -> String {
        let BlockSlot {
            name,
            kind,
            bits,
            items_per_word,
            item_bits,
            ..
        } = *coded;
        let code = coded.block.code;
        let step = match coded.non_negative {
            true => code.unsigned_step,
            false => code.signed_step,
        };
        let step = format!("bitcast<f32>({:#010x}u)", step.to_bits());
        let mask = (1u64 << bits) - 1;
        let lanes = format!("vec4<u32>(0u, {bits}u, {}u, {}u)", 2 * bits, 3 * bits);
        let codes = match (self.vector(), items_per_word) {
            (true, 1) => format!("(VU({name}[i]) >> {lanes}) & VU({mask}u)"),
            (true, _) => format!(
                "(VU({name}[i / {items_per_word}u] >> ((i % {items_per_word}u) * \
                 {item_bits}u)) >> {lanes}) & VU({mask}u)"
            ),
            (false, _) => {
                let per_word = 32 / bits;
                format!("({name}[i / {per_word}u] >> ((i % {per_word}u) * {bits}u)) & {mask}u")
            }
        };
        format!("block_{kind}_value({codes}, scale_{name}, {bits}u, {step})")
    }
}

/// A block-wise slot as its generated WGSL names and packs it.
#[derive(Clone, Copy)]
struct BlockSlot<'a> {
    slot: usize,
    name: &'a str,
    non_negative: bool,
    /// `unsigned` for a slot never negative, else `signed`: which codec functions it calls.
    kind: &'static str,
    block: BlockFormat,
    /// Bits per code.
    bits: u64,
    /// A vector item's codes per u32 word, and their bits.
    items_per_word: u64,
    item_bits: u64,
    /// Blocks' scales per u32 word of the scales' binding, each `scale_width` bits.
    scales_per_word: u64,
    scale_width: u64,
    scale_mask: u64,
}

impl<'a> BlockSlot<'a> {
    /// Slot `slot`, `name` in the rule's WGSL (never negative where `non_negative`), stored
    /// in `block`.
    fn new(slot: usize, name: &'a str, non_negative: bool, block: BlockFormat) -> Self {
        let bits = block.code.bits as u64;
        let scale_bytes = block.scale_bytes();
        let scale_width = 8 * scale_bytes;
        Self {
            slot,
            name,
            non_negative,
            kind: match non_negative {
                true => "unsigned",
                false => "signed",
            },
            block,
            bits,
            items_per_word: 8 / bits,
            item_bits: 4 * bits,
            scales_per_word: 4 / scale_bytes,
            scale_width,
            scale_mask: (1u64 << scale_width) - 1,
        }
    }

    /// The private variable(s) holding the items' new values.
    fn next(&self) -> String {
        format!("next_{}", self.name)
    }
}

/// The generated WGSL for a rule whose state slots are `slots` (name, never negative), stored
/// in `formats`, in `lanes`: bindings, accessors, `finish`, `begin_items` and `end_items`.
pub(crate) fn accessors(slots: &[(&str, bool)], formats: &KernelFormats, lanes: Lanes) -> String {
    let mut generator = Generator {
        lanes,
        out: String::new(),
        finish: String::new(),
        begin: String::new(),
        end: String::new(),
        formats,
    };
    writeln!(
        generator.out,
        "// Generated by src/gpu/glue.rs for {formats:?}.\n\
         const ITEMS: u32 = {}u;\n\
         // Which of the invocation's items the prelude is updating (0..ITEMS): where a\n\
         // block-wise slot keeps the item's new value.\n\
         var<private> item_k: u32;",
        formats.items(lanes)
    )
    .unwrap();
    generator.guard();
    generator.params();
    generator.grads();
    for (slot, (name, non_negative)) in slots.iter().enumerate() {
        generator.slot(slot, name, *non_negative);
    }
    let Generator {
        mut out,
        finish,
        begin,
        end,
        ..
    } = generator;
    writeln!(
        out,
        "fn finish(i: u32, p: V) {{\n{finish}}}\n\
         fn begin_items(first: u32) {{\n\
         \x20   let block = first / ITEMS;\n{begin}}}\n\
         fn end_items(first: u32) {{\n\
         \x20   let block = first / ITEMS;\n{end}}}"
    )
    .unwrap();
    out
}
