//! Storage formats: how the params, grads, master weights and each state slot are stored, and
//! what each costs in bytes. The rules never see a format: the prelude loads every value to
//! f32 before a rule's `update` and stores it after, through the WGSL codecs beside their
//! CPU twins here (`codec.wgsl` with [`codec`] for the 16-bit formats, `block.wgsl` with
//! `block.rs` for block codes, `correction.wgsl` with `correction.rs` for the 8-bit master).
//! A state format is a name and a [`Layout`], listed in [`StateFormat::ALL`]; everything
//! else reads its layout. This layer is plain data, integer/f32 arithmetic and WGSL text: no
//! GPU and no particular rule.

pub(crate) mod block;
pub mod codec;
pub(crate) mod correction;
pub mod q4;
pub mod q8;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
pub use block::{BlockFormat, Code};

/// Elements in one block of 8-bit state: one bf16 scale per block.
pub const BLOCK: u64 = block::BLOCK;

/// How a caller's params or grads buffer stores each element. 16-bit formats pack two
/// elements per `u32`, element `2k` in the low half: a buffer of `len` elements is
/// `ceil(len / 2) * 4` bytes, and the spare half of an odd-length buffer is never changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// bfloat16: f32's range with 8 bits of precision.
    Bf16,
    /// IEEE half: 11 bits of precision, largest finite value 65504.
    F16,
}

impl Dtype {
    /// Bytes a buffer of `len` elements takes (whole `u32` words).
    pub fn buffer_bytes(self, len: u64) -> u64 {
        match self {
            Dtype::F32 => len.saturating_mul(4),
            Dtype::Bf16 | Dtype::F16 => len.div_ceil(2).saturating_mul(4),
        }
    }

    /// Bytes per element.
    pub fn element_bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    /// Whether the format packs two elements per word.
    pub fn is_16_bit(self) -> bool {
        self != Dtype::F32
    }

    /// The bytes of `values` in this format, each rounded to nearest, ties to even: what to
    /// upload into a buffer of this format.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => bytemuck::cast_slice(values).to_vec(),
            Dtype::Bf16 | Dtype::F16 => {
                let mut halves: Vec<u16> = values.iter().map(|&v| self.nearest(v)).collect();
                halves.resize(values.len().next_multiple_of(2), 0);
                bytemuck::cast_slice(&halves).to_vec()
            }
        }
    }

    /// The first `len` elements of `bytes` (a buffer of this format) as f32, exactly.
    pub fn decode(self, bytes: &[u8], len: usize) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .take(len)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::Bf16 | Dtype::F16 => bytes
                .chunks_exact(2)
                .take(len)
                .map(|b| self.value(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        }
    }

    /// The 16-bit bits of `x` rounded to nearest, ties to even (16-bit formats only).
    pub(crate) fn nearest(self, x: f32) -> u16 {
        match self {
            Dtype::F16 => codec::f16_nearest(x),
            _ => codec::bf16_nearest(x),
        }
    }

    /// The value of 16-bit bits (16-bit formats only).
    pub(crate) fn value(self, bits: u16) -> f32 {
        match self {
            Dtype::F16 => codec::f16_value(bits),
            _ => codec::bf16_value(bits),
        }
    }

    /// The name a precision's text gives it (`f32`, `bf16`, `f16`), as errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

/// The f32 copy of the weights an optimizer keeps when the params are 16-bit, so that updates
/// smaller than a 16-bit ulp are not lost. The params buffer receives the rounded master after
/// every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Master {
    /// No master: the update is computed in f32 from the 16-bit param and rounded back with
    /// the precision's [`Rounding`] ("pure 16-bit").
    #[default]
    None,
    /// A full f32 master (4 bytes per parameter); the param is the master rounded to nearest,
    /// ties to even.
    F32,
    /// bf16 params only: the low 16 bits of the f32 master (2 bytes per parameter), which
    /// together with the bf16 param give back the master exactly. The param is then the master
    /// rounded to nearest with ties away from zero (see [`codec::split_remainder`]).
    Bf16Remainder,
    /// bf16 params only: one byte per parameter, a signed count of 1/256ths of the param's
    /// ulp, rounded stochastically (`correction.rs`): the master within ulp/512 of the f32
    /// one (16 significant bits), for 1 byte where the remainder takes 2. The param is the
    /// master rounded to nearest, ties to even.
    Bf16Correction,
}

/// How a 16-bit param without a master is rounded after each update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round to nearest, ties to even: updates below half an ulp are lost.
    #[default]
    NearestEven,
    /// Stochastic rounding: up with probability equal to the dropped fraction of an ulp, from a
    /// counter-based hash of the element's index and the step ([`codec::random_bits`]), so the
    /// update is unbiased and a GPU and its twin agree bit for bit.
    Stochastic,
}

/// How a state format lays out its elements: all that the GPU glue, the engine's buffers, the
/// CPU twin and checkpoints need to know of it, so that none of them names a format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// One value per element in a [`Dtype`]: f32, or a 16-bit float two per word (element
    /// `2k` in the low half), rounded to nearest, ties to even (`codec.wgsl`, [`codec`]).
    Elements(Dtype),
    /// Blocks of [`BLOCK`] elements, a code per element and a scale per block
    /// ([`BlockFormat`], `block.wgsl`).
    Blocks(block::BlockFormat),
}

/// How one state slot (`exp_avg`, ...) is stored: a name and a [`Layout`]. Each format is
/// declared once, in a module of its own for block formats ([`q8::FORMAT`], [`q4::FORMAT`]),
/// and listed once in [`StateFormat::ALL`], the registry that the parser, the engine, the
/// twin, checkpoints, the benchmark and the tests read. Formats compare by name.
#[derive(Clone, Copy, Debug)]
pub struct StateFormat {
    name: &'static str,
    layout: Layout,
}

impl StateFormat {
    /// 4 bytes per element: the default.
    pub const F32: StateFormat = StateFormat::new("f32", Layout::Elements(Dtype::F32));
    /// 2 bytes per element, rounded to nearest, ties to even.
    pub const BF16: StateFormat = StateFormat::new("bf16", Layout::Elements(Dtype::Bf16));
    /// Blocks of 32 elements, one bf16 scale per block and one byte per element, coded in
    /// closed form ([`q8`]): square-root companding for slots that can be negative, a
    /// zero-free fourth-root companding for those that cannot; non-finite values keep codes
    /// of their own. 1 + 2/32 bytes per element.
    pub const BLOCK8: StateFormat = q8::FORMAT;
    /// Blocks of 32 elements, one scale byte (a power of two) per block and two codes per
    /// byte, the 8-bit code's scheme at 4 bits ([`q4`]). 0.5 + 1/32 bytes per element.
    pub const BLOCK4: StateFormat = q4::FORMAT;

    /// Every state format, in the order of their cost in bytes: the registry. A new format is
    /// a declaration and a line here.
    pub const ALL: &'static [StateFormat] = &[Self::F32, Self::BF16, Self::BLOCK8, Self::BLOCK4];

    /// A format named `name` (what `Precision`'s short form calls it) laid out as `layout`.
    pub const fn new(name: &'static str, layout: Layout) -> Self {
        Self { name, layout }
    }

    /// The name `Precision`'s short form gives it (`state=8bit`).
    pub fn name(self) -> &'static str {
        self.name
    }

    /// How its elements are laid out.
    pub fn layout(self) -> Layout {
        self.layout
    }

    /// The registered format named `name`.
    pub fn named(name: &str) -> Option<StateFormat> {
        Self::ALL.iter().copied().find(|format| format.name == name)
    }

    /// For a block format, its code and scale.
    pub fn blocks(self) -> Option<block::BlockFormat> {
        match self.layout {
            Layout::Blocks(format) => Some(format),
            Layout::Elements(_) => None,
        }
    }

    /// Bits per element of its values or codes (scales aside).
    pub fn bits(self) -> u64 {
        match self.layout {
            Layout::Elements(dtype) => 8 * dtype.element_bytes(),
            Layout::Blocks(format) => format.code.bits as u64,
        }
    }

    /// Bytes the state of `len` elements takes: the values (whole words), and for block
    /// formats the scales (whole words).
    pub fn buffer_bytes(self, len: u64) -> u64 {
        self.value_bytes(len) + self.scale_bytes(len)
    }

    /// Bytes of the values or codes of `len` elements, in whole words.
    pub fn value_bytes(self, len: u64) -> u64 {
        len.saturating_mul(self.bits()).div_ceil(32) * 4
    }

    /// Bytes of the scales of a block state of `len` elements (whole words); 0 for others.
    pub fn scale_bytes(self, len: u64) -> u64 {
        self.blocks().map_or(0, |f| {
            (len.div_ceil(BLOCK) * f.scale_bytes()).div_ceil(4) * 4
        })
    }

    /// Bytes one step moves to read or to write the state of `len` elements: its values or
    /// codes, and the scale of each block touched.
    pub fn moved_bytes(self, len: u64) -> u64 {
        let scales = self
            .blocks()
            .map_or(0, |f| f.scale_bytes() * len.div_ceil(BLOCK));
        (len * self.bits()).div_ceil(8) + scales
    }

    /// The buffer contents of `values` in this format: the values, and for block formats the
    /// scale of each block of 32, blocks counted from the first value, each in whole words;
    /// coded for a slot that is never negative where `non_negative`, rounded with the random
    /// points of slot `slot` at step `step` (`block.rs`'s `random`).
    pub fn encode(
        self,
        values: &[f32],
        non_negative: bool,
        slot: u32,
        step: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let len = values.len() as u64;
        let mut codes = vec![0u8; self.value_bytes(len) as usize];
        let mut scales = vec![0u8; self.scale_bytes(len) as usize];
        for (k, block) in values.chunks(BLOCK as usize).enumerate() {
            let first = (k as u64 * BLOCK) as u32;
            let stream = block::Stream { first, step, slot };
            self.store(block, non_negative, stream, &mut codes, &mut scales);
        }
        (codes, scales)
    }

    /// Stores the new values of the elements from `stream.first` (a whole block, or a
    /// block's tail, for block formats) into the values and scales of the whole state.
    pub(crate) fn store(
        self,
        values: &[f32],
        non_negative: bool,
        stream: block::Stream,
        codes: &mut [u8],
        scales: &mut [u8],
    ) {
        let start = stream.first as usize;
        match self.layout {
            Layout::Elements(Dtype::F32) => {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                codes[4 * start..4 * start + bytes.len()].copy_from_slice(bytes);
            }
            Layout::Elements(dtype) => {
                for (k, &value) in values.iter().enumerate() {
                    let e = 2 * (start + k);
                    codes[e..e + 2].copy_from_slice(&dtype.nearest(value).to_le_bytes());
                }
            }
            Layout::Blocks(format) => {
                format.encode_block(values, non_negative, stream, codes, scales)
            }
        }
    }

    /// The value of element `e` of a state stored as `bytes` (and `scales`) in this format.
    pub(crate) fn value_at(self, bytes: &[u8], scales: &[u8], e: usize, non_negative: bool) -> f32 {
        match self.layout {
            Layout::Elements(Dtype::F32) => {
                f32::from_le_bytes(bytes[4 * e..4 * e + 4].try_into().expect("4 bytes"))
            }
            Layout::Elements(dtype) => {
                dtype.value(u16::from_le_bytes([bytes[2 * e], bytes[2 * e + 1]]))
            }
            Layout::Blocks(format) => format.value_at(bytes, scales, e, non_negative),
        }
    }

    /// The first `len` values of a state stored as `bytes` (and `scales`) in this format.
    pub fn decode(self, bytes: &[u8], scales: &[u8], len: usize, non_negative: bool) -> Vec<f32> {
        (0..len)
            .map(|e| self.value_at(bytes, scales, e, non_negative))
            .collect()
    }
}

impl Default for StateFormat {
    fn default() -> Self {
        Self::F32
    }
}

impl PartialEq for StateFormat {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for StateFormat {}

impl std::hash::Hash for StateFormat {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl PartialOrd for StateFormat {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StateFormat {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}

/// The storage formats of one parameter group: its params and grads buffers (the caller's),
/// its master weights and its state slots (the optimizer's). The rule's arithmetic is f32
/// whatever the formats. `Precision::default()` is f32 everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Precision {
    /// Format of the params buffer.
    pub params: Dtype,
    /// Format of the grads buffer, independent of the params'.
    pub grads: Dtype,
    /// Master weights kept when the params are 16-bit.
    pub master: Master,
    /// Rounding of 16-bit params without a master.
    pub rounding: Rounding,
    /// Format of every state slot not named in `state_overrides`.
    pub state: StateFormat,
    /// Per-slot formats by PyTorch state name, e.g. `("exp_avg_sq", StateFormat::F32)`.
    pub state_overrides: Vec<(String, StateFormat)>,
}

impl Precision {
    /// f32 params, grads and state: the default.
    pub fn f32() -> Self {
        Self::default()
    }

    /// 16-bit params and grads of `dtype`, an f32 master and f32 state: classic mixed
    /// precision.
    pub fn mixed(dtype: Dtype) -> Self {
        Self {
            params: dtype,
            grads: dtype,
            master: Master::F32,
            ..Self::default()
        }
    }

    /// bf16 params and grads, the 16-bit remainder master and 8-bit block-wise state: the
    /// leanest configuration (about 14 bytes moved per Adam parameter per step).
    pub fn lean() -> Self {
        Self {
            params: Dtype::Bf16,
            grads: Dtype::Bf16,
            master: Master::Bf16Remainder,
            state: StateFormat::BLOCK8,
            ..Self::default()
        }
    }

    /// The named configurations the benchmark and the example offer (see [`Precision`]'s
    /// `FromStr` for the syntax of each name).
    pub fn presets() -> Vec<(&'static str, Precision)> {
        [
            "f32",
            "f32,state=bf16",
            "f32,state=8bit",
            "bf16,master=f32",
            "bf16,master=remainder",
            "bf16,master=remainder,state=8bit",
            "bf16,master=8bit,state=8bit",
            "bf16,master=8bit,state=4bit",
            "bf16,state=bf16",
            "bf16,rounding=stochastic,state=bf16",
            "f16,master=f32",
        ]
        .into_iter()
        .map(|name| (name, name.parse().expect("presets parse")))
        .collect()
    }

    /// The format of state slot `slot`.
    pub fn state_format(&self, slot: &str) -> StateFormat {
        self.state_overrides
            .iter()
            .rev()
            .find(|(name, _)| name == slot)
            .map_or(self.state, |(_, format)| *format)
    }

    /// Bytes per element of the master weights.
    pub fn master_bytes(&self) -> u64 {
        match self.master {
            Master::None => 0,
            Master::F32 => 4,
            Master::Bf16Remainder => 2,
            Master::Bf16Correction => 1,
        }
    }

    /// Bytes per element one step moves for the params (read and written), grads (read) and
    /// master (read and written); the state comes on top ([`StateFormat::moved_bytes`]).
    pub fn weight_bytes_per_element(&self) -> u64 {
        2 * self.params.element_bytes() + self.grads.element_bytes() + 2 * self.master_bytes()
    }

    /// Bytes one step over `len` elements moves when the state slots `kept` are kept: params
    /// read and written, grads read, master and every kept state read and written.
    pub fn bytes_per_step<'a>(&self, len: u64, kept: impl IntoIterator<Item = &'a str>) -> u64 {
        len * self.weight_bytes_per_element()
            + kept
                .into_iter()
                .map(|slot| 2 * self.state_format(slot).moved_bytes(len))
                .sum::<u64>()
    }

    /// Bytes the optimizer stores for `len` elements with the state slots `kept`: the master
    /// and every kept state, in whole words and blocks.
    pub fn stored_bytes<'a>(&self, len: u64, kept: impl IntoIterator<Item = &'a str>) -> u64 {
        let master = match self.master {
            Master::None => 0,
            Master::F32 => 4 * len,
            Master::Bf16Remainder => Dtype::Bf16.buffer_bytes(len),
            Master::Bf16Correction => len.div_ceil(4) * 4,
        };
        master
            + kept
                .into_iter()
                .map(|slot| self.state_format(slot).buffer_bytes(len))
                .sum::<u64>()
    }

    /// Rejects combinations that mean nothing, and overrides of slots `slots` does not have.
    pub fn validate(&self, slots: &[&str]) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidPrecision { reason });
        match (self.params, self.master) {
            (Dtype::F32, Master::F32 | Master::Bf16Remainder | Master::Bf16Correction) => {
                return invalid(
                    "master weights are for 16-bit params; f32 params are their own master".into(),
                )
            }
            (Dtype::F16, Master::Bf16Remainder) => {
                return invalid(
                    "the 16-bit remainder master needs bf16 params (an f16 and 16 more bits do \
                     not make an f32); use master=f32"
                        .into(),
                )
            }
            (Dtype::F16, Master::Bf16Correction) => {
                return invalid(
                    "the 8-bit correction master needs bf16 params (its steps are 1/256 of a \
                     bf16 ulp); use master=f32"
                        .into(),
                )
            }
            _ => {}
        }
        if self.rounding == Rounding::Stochastic
            && (self.params == Dtype::F32 || self.master != Master::None)
        {
            return invalid(
                "stochastic rounding applies to 16-bit params without a master; a master is \
                 rounded to nearest"
                    .into(),
            );
        }
        if let Some((name, _)) = self
            .state_overrides
            .iter()
            .find(|(name, _)| !slots.contains(&name.as_str()))
        {
            return invalid(format!(
                "no state slot `{name}` to override (this rule keeps: {})",
                slots.join(", ")
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Precision {
    /// The short form [`FromStr`] reads: the params' format, then only what differs from the
    /// defaults (grads as the params, no master, nearest rounding, f32 state).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.params.name())?;
        if self.grads != self.params {
            write!(f, ",grads={}", self.grads.name())?;
        }
        match self.master {
            Master::None => {}
            Master::F32 => write!(f, ",master=f32")?,
            Master::Bf16Remainder => write!(f, ",master=remainder")?,
            Master::Bf16Correction => write!(f, ",master=8bit")?,
        }
        if self.rounding == Rounding::Stochastic {
            write!(f, ",rounding=stochastic")?;
        }
        if self.state != StateFormat::F32 {
            write!(f, ",state={}", self.state.name())?;
        }
        for (slot, format) in &self.state_overrides {
            write!(f, ",{slot}={}", format.name())?;
        }
        Ok(())
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// Reads `PARAMS[,key=value...]`: `PARAMS` is `f32`, `bf16` or `f16` (the grads default to
    /// the same), then any of `grads=f32|bf16|f16`, `master=none|f32|remainder|8bit`,
    /// `rounding=nearest|stochastic`, `state=f32|bf16|8bit|4bit`, and `SLOT=f32|bf16|8bit|4bit`
    /// for one state slot by name. E.g. `bf16,master=remainder,state=8bit` or
    /// `bf16,master=8bit,state=8bit,exp_avg_sq=4bit`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidPrecision { reason };
        let dtype = |value: &str| match value {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            "f16" => Ok(Dtype::F16),
            _ => Err(bad(format!("`{value}` is not a format: f32, bf16 or f16"))),
        };
        let state = |value: &str| {
            StateFormat::named(value).ok_or_else(|| {
                let names: Vec<&str> = StateFormat::ALL.iter().map(|f| f.name()).collect();
                bad(format!(
                    "`{value}` is not a state format: {}",
                    names.join(", ")
                ))
            })
        };
        let mut parts = text.split(',').map(str::trim);
        let params = dtype(parts.next().unwrap_or_default())?;
        let mut precision = Precision {
            params,
            grads: params,
            ..Precision::default()
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            match key {
                "grads" => precision.grads = dtype(value)?,
                "master" => {
                    precision.master = match value {
                        "none" => Master::None,
                        "f32" => Master::F32,
                        "remainder" => Master::Bf16Remainder,
                        "8bit" => Master::Bf16Correction,
                        _ => {
                            return Err(bad(format!(
                                "`{value}` is not none, f32, remainder or 8bit"
                            )))
                        }
                    }
                }
                "rounding" => {
                    precision.rounding = match value {
                        "nearest" => Rounding::NearestEven,
                        "stochastic" => Rounding::Stochastic,
                        _ => return Err(bad(format!("`{value}` is not nearest or stochastic"))),
                    }
                }
                "state" => precision.state = state(value)?,
                slot => precision
                    .state_overrides
                    .push((slot.to_owned(), state(value)?)),
            }
        }
        Ok(precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_their_names() {
        for (name, precision) in Precision::presets() {
            assert_eq!(precision.to_string(), name);
            precision.validate(&["exp_avg", "exp_avg_sq"]).unwrap();
        }
        assert_eq!(
            "bf16,master=remainder,state=8bit"
                .parse::<Precision>()
                .unwrap(),
            Precision::lean()
        );
    }

    #[test]
    fn meaningless_combinations_are_refused() {
        for text in [
            "f32,master=f32",
            "f16,master=remainder",
            "bf16,master=f32,rounding=stochastic",
            "f32,rounding=stochastic",
            "bf16,nope=8bit",
        ] {
            let precision: Precision = text.parse().unwrap();
            assert!(precision.validate(&["exp_avg"]).is_err(), "{text}");
        }
        for text in ["f64", "bf16,master", "bf16,state=2bit"] {
            assert!(text.parse::<Precision>().is_err(), "{text}");
        }
    }
}
