//! Checkpoints: an optimizer's state as named host tensors plus string metadata, and its file
//! form, a safetensors file written crash-safely. Names follow PyTorch's flattened optimizer
//! state dict (`state.<tensor>.exp_avg`, `state.<tensor>.step`, ...); what PyTorch has no name
//! for is under `fused_optim.` (the code tables of block state, the grad guard's status).
//! Plain data and files: no GPU. The optimizers make and restore checkpoints
//! (`Optimizer::checkpoint`, `Optimizer::restore`). Files are native only; in a browser,
//! checkpoints travel as bytes (`Checkpoint::to_bytes`, `Checkpoint::from_bytes`).

use std::collections::{BTreeMap, HashMap};
#[cfg(not(target_arch = "wasm32"))]
use std::io::Write;
#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype as FileDtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::format::block::BlockFormat;
use crate::format::{Dtype, Precision, StateFormat};

/// The version of the layout this library writes; files of a newer version are refused.
pub const FORMAT_VERSION: u32 = 1;

/// The metadata key of the format version.
pub const VERSION_KEY: &str = "fused_optim.format_version";

/// The prefix of each tensor's metadata key: `fused_optim.param.<tensor>` =
/// `<group>:<index in the group>:<elements>`.
pub const PARAM_PREFIX: &str = "fused_optim.param.";

/// The prefix of each parameter group's metadata keys: `fused_optim.group.<group>.precision`
/// and the [`layout_key`]s.
pub const GROUP_PREFIX: &str = "fused_optim.group.";

/// Where one tensor of an optimizer's state sits, as `fused_optim.param.<name>` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorPlace {
    /// Its parameter group.
    pub group: usize,
    /// Its place among the group's tensors.
    pub index: usize,
    /// Its elements.
    pub elements: u64,
}

/// Every tensor's place in `metadata`, by name; an entry that is not
/// `<group>:<index>:<elements>` is `CorruptCheckpoint`.
pub(crate) fn places(metadata: &BTreeMap<String, String>) -> Result<BTreeMap<String, TensorPlace>> {
    metadata
        .iter()
        .filter_map(|(key, value)| Some((key.strip_prefix(PARAM_PREFIX)?, value)))
        .map(|(name, value)| {
            let mut parts = value.split(':').map(str::parse::<u64>);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(group)), Some(Ok(index)), Some(Ok(elements)), None) => {
                    let place = TensorPlace {
                        group: group as usize,
                        index: index as usize,
                        elements,
                    };
                    Ok((name.to_owned(), place))
                }
                _ => Err(corrupt(format!(
                    "`{PARAM_PREFIX}{name}` = `{value}` is not group:index:elements"
                ))),
            }
        })
        .collect()
}

/// The prefix of the code tables of 8-bit state: the tensors `fused_optim.qmap.signed` and
/// `fused_optim.qmap.unsigned` (each code's value in a block of scale 1, 256 f32), and the
/// metadata `fused_optim.qmap.<slot>` = `signed` or `unsigned`, the table of that slot. An
/// element `i` of 8-bit state `state.<tensor>.<slot>` is `table[code] * scale[i / block]`
/// (`scale` the bf16 tensor `state.<tensor>.<slot>.scale`, `block` the metadata
/// [`BLOCK_KEY`]), or `table[code]` itself where that is not finite (NaN, +inf).
pub const QMAP_PREFIX: &str = "fused_optim.qmap.";

/// The metadata key of the layout of group `group`'s block-coded slot `slot`:
/// `fused_optim.group.<group>.layout.<slot>` = `code_bits=<bits>,scale_shift=<shift>`, so
/// that other tools unpack codes of `bits` bits (little end first in each byte) and take each
/// block's scale as the f32 of its bits shifted left by `shift` (16: bf16 scales, 23:
/// exponent bytes), with no table of formats of their own.
pub fn layout_key(group: usize, slot: &str) -> String {
    format!("{GROUP_PREFIX}{group}.layout.{slot}")
}

/// Whether `key` is a [`layout_key`].
fn is_layout_key(key: &str) -> bool {
    key.strip_prefix(GROUP_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(_, rest)| rest.starts_with("layout."))
}

/// The value of a block format's [`layout_key`].
pub(crate) fn layout_text(format: BlockFormat) -> String {
    format!(
        "code_bits={},scale_shift={}",
        format.code.bits, format.scale_shift
    )
}

/// The name of the code table of a block code of `bits` bits for slots of `kind` (`signed` or
/// `unsigned`): `fused_optim.qmap.<kind>` at 8 bits, `fused_optim.qmap.<kind><bits>` else.
pub(crate) fn table_name(kind: &str, bits: u32) -> String {
    match bits {
        8 => format!("{QMAP_PREFIX}{kind}"),
        _ => format!("{QMAP_PREFIX}{kind}{bits}"),
    }
}

/// The checkpoint dtype of a block format's scales: bf16 for 16-bit scales (they are bf16s),
/// bytes for exponent bytes.
pub(crate) fn scale_dtype(format: BlockFormat) -> TensorDtype {
    match format.scale_shift {
        16 => TensorDtype::Bf16,
        _ => TensorDtype::U8,
    }
}

/// A code's table entry times its block's scale; a non-finite entry (NaN, +inf) as it is.
fn scaled(value: f32, scale: f32) -> f32 {
    match value.is_finite() {
        true => value * scale,
        false => value,
    }
}

/// The metadata key of the range of the packed layout a shard's checkpoint holds:
/// `start:end:len`. Its tensors' state then covers only their parts in the range, each from
/// element `skip` of the tensor: `fused_optim.piece.<tensor>` = `skip:len`.
/// [`Checkpoint::merge`] joins every shard's checkpoint into the whole set's.
pub const SHARD_KEY: &str = "fused_optim.shard";

/// The prefix of the metadata keys of a shard checkpoint's parts of tensors.
pub const PIECE_PREFIX: &str = "fused_optim.piece.";

/// The metadata key of the elements per 8-bit block, where a checkpoint has 8-bit state.
/// Checkpoints written before it had blocks of 256 with an f32 `.absmax` per block.
pub const BLOCK_KEY: &str = "fused_optim.block";

/// The element type of a [`HostTensor`]: the formats optimizer state is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorDtype {
    /// f32, little-endian.
    F32,
    /// f64, little-endian (host-side values such as NAdam's `mu_product`).
    F64,
    /// bf16 bit patterns, little-endian.
    Bf16,
    /// f16 bit patterns, little-endian (16-bit params saved beside a checkpoint).
    F16,
    /// 8-bit codes.
    U8,
    /// 16-bit words (the bf16 master's remainders).
    U16,
    /// 32-bit words (the grad guard's status).
    U32,
}

impl TensorDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            TensorDtype::U8 => 1,
            TensorDtype::Bf16 | TensorDtype::F16 | TensorDtype::U16 => 2,
            TensorDtype::F32 | TensorDtype::U32 => 4,
            TensorDtype::F64 => 8,
        }
    }

    /// The tensor dtype of values stored in `dtype`.
    pub fn of(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => TensorDtype::F32,
            Dtype::Bf16 => TensorDtype::Bf16,
            Dtype::F16 => TensorDtype::F16,
        }
    }

    fn file(self) -> FileDtype {
        match self {
            TensorDtype::F32 => FileDtype::F32,
            TensorDtype::F64 => FileDtype::F64,
            TensorDtype::Bf16 => FileDtype::BF16,
            TensorDtype::F16 => FileDtype::F16,
            TensorDtype::U8 => FileDtype::U8,
            TensorDtype::U16 => FileDtype::U16,
            TensorDtype::U32 => FileDtype::U32,
        }
    }

    fn of_file(dtype: FileDtype) -> Option<Self> {
        Some(match dtype {
            FileDtype::F32 => TensorDtype::F32,
            FileDtype::F64 => TensorDtype::F64,
            FileDtype::BF16 => TensorDtype::Bf16,
            FileDtype::F16 => TensorDtype::F16,
            FileDtype::U8 => TensorDtype::U8,
            FileDtype::U16 => TensorDtype::U16,
            FileDtype::U32 => TensorDtype::U32,
            _ => return None,
        })
    }
}

/// One named tensor of a checkpoint, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Its element type.
    pub dtype: TensorDtype,
    /// Its shape (`[]` for a scalar such as `step`).
    pub shape: Vec<usize>,
    /// Its elements' bytes, little-endian, `shape`'s product times the dtype's size.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// A one-dimensional tensor of `dtype` holding `data`.
    pub fn vector(dtype: TensorDtype, data: Vec<u8>) -> Self {
        Self {
            dtype,
            shape: vec![data.len() / dtype.bytes()],
            data,
        }
    }

    /// A scalar f32 (PyTorch keeps `step` as one).
    pub fn scalar_f32(value: f32) -> Self {
        Self {
            dtype: TensorDtype::F32,
            shape: Vec::new(),
            data: value.to_le_bytes().to_vec(),
        }
    }

    /// A scalar f64.
    pub fn scalar_f64(value: f64) -> Self {
        Self {
            dtype: TensorDtype::F64,
            shape: Vec::new(),
            data: value.to_le_bytes().to_vec(),
        }
    }

    /// Elements, from the shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An optimizer's state on the host: named tensors and string metadata (the rule, each
/// group's hyperparameters and formats, the layout, the format version). The in-memory form
/// for callers with a format of their own; [`Checkpoint::save`] and [`Checkpoint::load`] give
/// the safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Tensors by name.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Metadata by key.
    pub metadata: BTreeMap<String, String>,
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::CorruptCheckpoint {
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// The safetensors bytes of the checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(name, tensor)| {
                TensorView::new(tensor.dtype.file(), tensor.shape.clone(), &tensor.data)
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(metadata)).map_err(|e| corrupt(e.to_string()))
    }

    /// Parses safetensors `bytes`: a truncated or corrupted file, a tensor of a type
    /// optimizer state never has, or a newer format version is `CorruptCheckpoint`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let version = metadata
            .get(VERSION_KEY)
            .ok_or_else(|| corrupt(format!("no `{VERSION_KEY}` in the metadata")))?;
        match version.parse::<u32>() {
            Ok(version) if version <= FORMAT_VERSION => {}
            Ok(version) => {
                return Err(corrupt(format!(
                    "format version {version} is newer than this library's {FORMAT_VERSION}; \
                     upgrade fused-optim to read it"
                )))
            }
            Err(_) => {
                return Err(corrupt(format!(
                    "format version `{version}` is not a number"
                )))
            }
        }
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let dtype = TensorDtype::of_file(view.dtype())
                    .ok_or_else(|| corrupt(format!("tensor `{name}` is {:?}", view.dtype())))?;
                let tensor = HostTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                Ok((name, tensor))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Self { tensors, metadata })
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Writes the checkpoint to `path` so that a crash or a full disk never leaves a
    /// truncated file there: into a temporary file of its own in the same directory (created
    /// exclusively, its name unique to this save), synced, then renamed over `path` (and the
    /// directory synced, where the platform allows). Saves of one path running at once, from
    /// threads or processes, never share a temporary file: each rename installs one whole
    /// checkpoint, and the last rename wins.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_through(path, |file| file)
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// [`Checkpoint::save`] writing through `writer`, which wraps the temporary file (for
    /// callers that count or throttle bytes, and for the tests that inject write errors).
    /// On any error the temporary file is removed and `path` is untouched.
    pub fn save_through<W: Write>(
        &self,
        path: impl AsRef<Path>,
        writer: impl FnOnce(std::fs::File) -> W,
    ) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let (file, temporary) = create_temporary(path).map_err(|e| io_error(path, e))?;
        let written = (|file: std::fs::File| -> std::io::Result<()> {
            let mut out = writer(file.try_clone()?);
            out.write_all(&bytes)?;
            out.flush()?;
            drop(out);
            file.sync_all()?;
            drop(file);
            std::fs::rename(&temporary, path)
        })(file);
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io_error(path, error));
        }
        if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Makes the rename durable; not every platform can open a directory.
            if let Ok(directory) = std::fs::File::open(directory) {
                let _ = directory.sync_all();
            }
        }
        Ok(())
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Reads and parses the checkpoint at `path` (see [`Checkpoint::from_bytes`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_bytes(&bytes)
    }

    /// The checkpoint with every compact state in f32, for export to frameworks that know no
    /// 8-bit, 4-bit or bf16 state: block codes decoded with their block's scale and their
    /// slot's code table, bf16 state widened, and each group's precision rewritten to f32
    /// state, so it restores into an optimizer built with f32 state. The master (a correction
    /// byte included), `step` and the rest are unchanged. A checkpoint whose codes lack their
    /// scales or table is `CorruptCheckpoint`.
    pub fn expanded(&self) -> Result<Checkpoint> {
        let mut expanded = self.clone();
        for (name, tensor) in &self.tensors {
            let Some(rest) = name.strip_prefix("state.") else {
                continue;
            };
            let scales_of_codes = name
                .strip_suffix(".scale")
                .and_then(|codes| self.tensors.get(codes))
                .is_some_and(|codes| codes.dtype == TensorDtype::U8);
            if scales_of_codes {
                continue; // decoded with its codes, and removed there
            }
            let values: Vec<f32> = match tensor.dtype {
                TensorDtype::Bf16 | TensorDtype::F16 => {
                    let dtype = match tensor.dtype {
                        TensorDtype::F16 => Dtype::F16,
                        _ => Dtype::Bf16,
                    };
                    let len = tensor.len();
                    dtype.decode(self.tensor(name, tensor.dtype, &[len])?, len)
                }
                // Block codes have their scales beside them; other bytes (the master
                // correction) stay as they are.
                TensorDtype::U8
                    if [".scale", ".absmax"]
                        .iter()
                        .any(|suffix| self.tensors.contains_key(&format!("{name}{suffix}"))) =>
                {
                    self.decode_codes(name, rest, tensor.len(), &mut expanded)?
                }
                _ => continue,
            };
            let data = bytemuck::cast_slice(&values).to_vec();
            expanded
                .tensors
                .insert(name.clone(), HostTensor::vector(TensorDtype::F32, data));
        }
        expanded
            .tensors
            .retain(|name, _| !name.starts_with(QMAP_PREFIX));
        expanded.metadata.retain(|key, _| {
            !key.starts_with(QMAP_PREFIX) && key != BLOCK_KEY && !is_layout_key(key)
        });
        for (key, value) in expanded.metadata.iter_mut() {
            if key.starts_with(GROUP_PREFIX) && key.ends_with(".precision") {
                let mut precision: Precision = value.parse()?;
                precision.state = StateFormat::F32;
                precision.state_overrides.clear();
                *value = precision.to_string();
            }
        }
        Ok(expanded)
    }

    /// The f32 values of the block-coded tensor `name` (`state.` + `rest`) of `len` bytes,
    /// from its slot's code table and its blocks' scales, which are removed from `expanded`.
    /// The layout is its group's state format for the slot (its precision in the metadata,
    /// read through the registry); a checkpoint without `fused_optim.block` holds the legacy
    /// 8-bit blocks of 256 with an f32 `.absmax` each.
    fn decode_codes(
        &self,
        name: &str,
        rest: &str,
        len: usize,
        expanded: &mut Checkpoint,
    ) -> Result<Vec<f32>> {
        let (tensor, slot) = rest.rsplit_once('.').unwrap_or_default();
        let kind = self.meta(&format!("{QMAP_PREFIX}{slot}"))?;
        let Some(block) = self.metadata.get(BLOCK_KEY) else {
            let codes = self.tensor(name, TensorDtype::U8, &[len])?;
            let table = self.tensor(&format!("{QMAP_PREFIX}{kind}"), TensorDtype::F32, &[256])?;
            let absmax_name = format!("{name}.absmax");
            let absmax = self.tensor(&absmax_name, TensorDtype::F32, &[len.div_ceil(256)])?;
            let (table, absmax): (Vec<f32>, Vec<f32>) = (
                bytemuck::pod_collect_to_vec(table),
                bytemuck::pod_collect_to_vec(absmax),
            );
            expanded.tensors.remove(&absmax_name);
            return Ok(codes
                .iter()
                .enumerate()
                .map(|(i, &code)| scaled(table[code as usize], absmax[i / 256]))
                .collect());
        };
        let block: usize = block
            .parse()
            .ok()
            .filter(|&b: &usize| b > 0)
            .ok_or_else(|| corrupt(format!("`{BLOCK_KEY}` = `{block}` is not a block size")))?;
        let place = *self
            .places()?
            .get(tensor)
            .ok_or_else(|| corrupt(format!("no `{PARAM_PREFIX}{tensor}` for `{name}`")))?;
        let precision_key = format!("{GROUP_PREFIX}{}.precision", place.group);
        let precision: Precision = self.meta(&precision_key)?.parse()?;
        let format = precision.state_format(slot).blocks().ok_or_else(|| {
            corrupt(format!(
                "`{name}` is coded, but `{precision_key}` gives `{slot}` no block format"
            ))
        })?;
        let elements = place.elements as usize;
        let bits = format.code.bits as usize;
        let codes = self.tensor(name, TensorDtype::U8, &[(elements * bits).div_ceil(8)])?;
        let table = self.tensor(
            &table_name(kind, format.code.bits),
            TensorDtype::F32,
            &[1 << bits],
        )?;
        let table: Vec<f32> = bytemuck::pod_collect_to_vec(table);
        let scale_name = format!("{name}.scale");
        let scales = self.tensor(
            &scale_name,
            scale_dtype(format),
            &[elements.div_ceil(block)],
        )?;
        let values = (0..elements)
            .map(|i| {
                let value = table[format.code_at(codes, i) as usize];
                scaled(value, format.scale(scales, i / block))
            })
            .collect();
        expanded.tensors.remove(&scale_name);
        Ok(values)
    }

    /// Joins the checkpoints of every shard of a parameter set (each from
    /// [`ParamSet::shard`](crate::ParamSet::shard), in any order) into the checkpoint the whole
    /// set would have written: each tensor's parts concatenated in order (shards are cut on
    /// whole blocks and pairs, so codes, scales and masters join byte for byte). A single
    /// optimizer of the whole set restores it, the converter reads it, and shards of any other
    /// count restore their parts from it. The shards must cover the layout exactly, once,
    /// and agree on everything else (rule, steps, hyperparameters, formats, the guard's
    /// status, per-tensor scalars such as `step`); otherwise `CheckpointMismatch`, naming
    /// what differs.
    pub fn merge(shards: &[Checkpoint]) -> Result<Checkpoint> {
        let mismatch = |reason: String| Error::CheckpointMismatch { reason };
        let mut ranges = Vec::with_capacity(shards.len());
        for shard in shards {
            let text = shard.meta(SHARD_KEY)?;
            let numbers: Vec<u64> = text.split(':').filter_map(|n| n.parse().ok()).collect();
            let [start, end, len] = numbers[..] else {
                return Err(corrupt(format!(
                    "`{SHARD_KEY}` = `{text}` is not start:end:len"
                )));
            };
            ranges.push((start, end, len, shard));
        }
        ranges.sort_by_key(|&(start, ..)| start);
        let mut next = 0;
        for &(start, end, len, _) in &ranges {
            if start != next || end <= start || len != ranges[0].2 {
                return Err(mismatch(format!(
                    "the shards do not cover a layout of {} elements once, in order: one \
                     holds {start}..{end} of {len} where {next} comes next",
                    ranges[0].2
                )));
            }
            next = end;
        }
        if ranges.is_empty() || next != ranges[0].2 {
            return Err(mismatch(format!(
                "the shards end at {next} of {} elements",
                ranges.first().map_or(0, |r| r.2)
            )));
        }
        let mut merged = Checkpoint::default();
        for (_, _, _, shard) in &ranges {
            for (key, value) in &shard.metadata {
                if key == SHARD_KEY || key.starts_with(PIECE_PREFIX) {
                    continue;
                }
                match merged.metadata.insert(key.clone(), value.clone()) {
                    Some(other) if &other != value => {
                        return Err(mismatch(format!(
                            "the shards differ at `{key}`: `{other}` and `{value}`"
                        )))
                    }
                    _ => {}
                }
            }
        }
        let places = merged.places()?;
        // Each tensor's parts: (skip, len, the tensor's name in the shard).
        let mut parts: BTreeMap<String, Vec<(u64, u64, &Checkpoint)>> = BTreeMap::new();
        for (_, _, _, shard) in &ranges {
            for (key, value) in &shard.metadata {
                let Some(tensor) = key.strip_prefix(PIECE_PREFIX) else {
                    continue;
                };
                let (skip, len) = value
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| corrupt(format!("`{key}` = `{value}` is not skip:len")))?;
                parts
                    .entry(tensor.to_owned())
                    .or_default()
                    .push((skip, len, *shard));
            }
        }
        for (tensor, place) in &places {
            let mut pieces = parts.remove(tensor).unwrap_or_default();
            pieces.sort_by_key(|&(skip, ..)| skip);
            let mut at = 0;
            for &(skip, len, _) in &pieces {
                if skip != at {
                    return Err(mismatch(format!(
                        "the shards hold `{tensor}` from {skip}, where {at} comes next"
                    )));
                }
                at += len;
            }
            if at != place.elements {
                return Err(mismatch(format!(
                    "the shards hold {at} of `{tensor}`'s {} elements",
                    place.elements
                )));
            }
            let prefix = format!("state.{tensor}.");
            for (_, _, shard) in &pieces {
                for (name, part) in &shard.tensors {
                    // `state.a.b.exp_avg` is tensor `a.b`'s, not tensor `a`'s.
                    let owned = name.strip_prefix(&prefix).is_some_and(|suffix| {
                        let first = suffix.split('.').next().unwrap_or_default();
                        !places.contains_key(&format!("{tensor}.{first}"))
                    });
                    if !owned {
                        continue;
                    }
                    match merged.tensors.get_mut(name) {
                        None => {
                            merged.tensors.insert(name.clone(), part.clone());
                        }
                        // Scalars (`step`, host state) are each part's whole value.
                        Some(whole) if part.shape.is_empty() => {
                            if whole.data != part.data || whole.dtype != part.dtype {
                                return Err(mismatch(format!("the shards differ at `{name}`")));
                            }
                        }
                        Some(whole) if whole.dtype == part.dtype => {
                            whole.data.extend_from_slice(&part.data);
                            whole.shape = vec![whole.data.len() / whole.dtype.bytes()];
                        }
                        Some(_) => {
                            return Err(mismatch(format!("the shards store `{name}` differently")))
                        }
                    }
                }
            }
        }
        // What is not per tensor (code tables, the guard's status) is the same in every shard.
        for (_, _, _, shard) in &ranges {
            for (name, tensor) in &shard.tensors {
                if name.starts_with("state.") {
                    continue;
                }
                match merged.tensors.get(name) {
                    None => {
                        merged.tensors.insert(name.clone(), tensor.clone());
                    }
                    Some(other) if other.data != tensor.data => {
                        return Err(mismatch(format!("the shards differ at `{name}`")))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(merged)
    }

    /// Each tensor's place (group, index in the group, elements), by name, from the metadata.
    pub fn places(&self) -> Result<BTreeMap<String, TensorPlace>> {
        places(&self.metadata)
    }

    /// The bytes of tensor `name`, which must have `dtype` and `shape`; otherwise (or where
    /// it is missing, or its bytes do not fit its shape) `CorruptCheckpoint`.
    pub fn tensor(&self, name: &str, dtype: TensorDtype, shape: &[usize]) -> Result<&[u8]> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| corrupt(format!("tensor `{name}` is missing")))?;
        if tensor.dtype != dtype || tensor.shape != shape {
            return Err(corrupt(format!(
                "tensor `{name}` is {:?} {:?}, where this optimizer keeps {dtype:?} {shape:?}",
                tensor.dtype, tensor.shape
            )));
        }
        if tensor.data.len() != tensor.len() * dtype.bytes() {
            return Err(corrupt(format!(
                "tensor `{name}` holds {} bytes for {} elements of {dtype:?}",
                tensor.data.len(),
                tensor.len()
            )));
        }
        Ok(&tensor.data)
    }

    /// The metadata value `key`; `CorruptCheckpoint` where there is none.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("no `{key}` in the metadata")))
    }
}

/// A failed read or write of `path` as [`Error::Io`].
#[cfg(not(target_arch = "wasm32"))]
fn io_error(path: &Path, error: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Creates a new temporary file beside `path` for one save: its name carries the process id
/// and a counter of this process's saves, and it is created exclusively, so no other save, in
/// this process or another, ever writes to it. A name left by a crashed process of the same
/// id is skipped.
fn create_temporary(path: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    loop {
        let save = SAVES.fetch_add(1, Ordering::Relaxed);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.{save}.tmp", std::process::id()));
        let temporary = path.with_file_name(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((file, temporary)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}
