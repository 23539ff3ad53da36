//! Checkpoints of the engine's state: each named tensor's slices of the span buffers, the
//! metadata of groups, tensors and formats, the copies recorded into a caller's encoder and
//! read once mapped ([`PendingCheckpoint`]), and the checked restore. A child of the engine,
//! for its fields; the file format itself is src/checkpoint.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::submissions::{encoder_id, Ahead, Work};
use super::{initial_contents, Engine, HostHistory};
use crate::checkpoint::{
    layout_key, layout_text, places, scale_dtype, table_name, Checkpoint, HostTensor, TensorDtype,
    BLOCK_KEY, FORMAT_VERSION, GROUP_PREFIX, PARAM_PREFIX, PIECE_PREFIX, QMAP_PREFIX, SHARD_KEY,
    VERSION_KEY,
};
use crate::error::{Error, Result};
use crate::format::block::BlockFormat;
use crate::format::{Dtype, Layout, Master, StateFormat, BLOCK};
use crate::gpu::callbacks::{mapping_requested, Callbacks};
use crate::gpu::glue::Role;
use crate::gpu::GpuContext;
use crate::guard::{GradStatus, StatusWords};
use crate::rule::{Hyperparameter, UpdateRule};

/// The text of a hyperparameter in checkpoint metadata: exact for any f64 (Rust's shortest
/// round-tripping form).
fn hyperparameter_text(value: Hyperparameter) -> String {
    match value {
        Hyperparameter::Float(x) => format!("{x:?}"),
        Hyperparameter::Bool(b) => b.to_string(),
        Hyperparameter::Pair(a, b) => format!("{a:?},{b:?}"),
    }
}

/// Parses `text` as a hyperparameter of the same kind as `like`.
fn parse_hyperparameter(text: &str, like: Hyperparameter) -> Option<Hyperparameter> {
    let number = |t: &str| t.trim().parse::<f64>().ok();
    Some(match like {
        Hyperparameter::Float(_) => Hyperparameter::Float(number(text)?),
        Hyperparameter::Bool(_) => Hyperparameter::Bool(text.parse().ok()?),
        Hyperparameter::Pair(..) => {
            let (a, b) = text.split_once(',')?;
            Hyperparameter::Pair(number(a)?, number(b)?)
        }
    })
}

/// A tensor a checkpoint names: `len` elements from element `offset` of span `span`'s
/// buffers (a multiple of the 8-bit block, as every layout aligns its tensors). On a shard,
/// the part of the tensor the shard holds: from element `skip` of the tensor's `elements`
/// (a multiple of the layout's alignment, so of every block and pair).
pub(crate) struct NamedTensor {
    pub name: String,
    pub span: usize,
    pub offset: u64,
    pub len: u64,
    /// The tensor's index among its group's tensors.
    pub index: usize,
    pub skip: u64,
    pub elements: u64,
}

impl NamedTensor {
    /// The whole of tensor `name`, the `index`th of its group.
    pub fn whole(name: String, index: usize, span: usize, offset: u64, len: u64) -> Self {
        Self {
            name,
            span,
            offset,
            len,
            index,
            skip: 0,
            elements: len,
        }
    }
}

/// One per-element state a group keeps, as a checkpoint stores it: `state.<tensor>.<suffix>`.
struct Stored {
    suffix: String,
    role: Role,
    dtype: TensorDtype,
    /// Elements per stored value: 2 for 4-bit codes (two per byte), else 1.
    packed: u64,
}

impl Stored {
    /// The bytes, in the span's buffer, of a tensor of `len` elements from element `offset`,
    /// and its element count in the checkpoint (blocks, for scales).
    fn range(&self, offset: u64, len: u64) -> (Range<usize>, usize) {
        let (first, count) = match self.role {
            Role::Scales(_) => (
                offset / BLOCK,
                (offset + len).div_ceil(BLOCK) - offset / BLOCK,
            ),
            _ => (offset / self.packed, len.div_ceil(self.packed)),
        };
        let bytes = self.dtype.bytes();
        let start = first as usize * bytes;
        (start..start + count as usize * bytes, count as usize)
    }
}

/// A span's buffers' contents, by role.
type SpanContents = Vec<(Role, Vec<u8>)>;

/// Where the steps applied come from: known on the host, or the guard's status on the device.
enum Applied {
    Known(u64, Vec<Vec<f64>>),
    /// The status's copy is staging buffer `staging`; the host state after the count it holds
    /// is `history`'s (`fallback` past it). With `scaling`, the scaler's state joins the
    /// metadata.
    Device {
        staging: usize,
        history: HostHistory,
        fallback: Vec<Vec<f64>>,
        scaling: bool,
    },
}

/// A tensor cut out of a staging buffer.
struct Piece {
    name: String,
    staging: usize,
    bytes: Range<usize>,
    dtype: TensorDtype,
    count: usize,
}

/// A checkpoint recorded into a command encoder
/// ([`Optimizer::record_checkpoint`](crate::Optimizer::record_checkpoint)): copies of every
/// state buffer, taken where the encoder's commands run, mapped once its submission
/// completes. The training loop goes on while they map; [`PendingCheckpoint::is_ready`] says
/// whether they have, and `wait` or `save` (natively, from any thread) or `wait_async` (in a
/// browser too) build the [`Checkpoint`] or write its file. Submit the encoder before waiting.
pub struct PendingCheckpoint {
    context: GpuContext,
    staging: Vec<wgpu::Buffer>,
    mapping: Arc<Callbacks>,
    pieces: Vec<Piece>,
    /// Each tensor's name and group, for `step` and the rule's host state.
    counted: Vec<(String, usize)>,
    counts_steps: bool,
    host_names: &'static [&'static str],
    applied: Applied,
    tensors: BTreeMap<String, HostTensor>,
    metadata: BTreeMap<String, String>,
    /// Where the copies go once read, for the optimizer's next recorded checkpoint.
    keep: Option<Arc<Mutex<Vec<wgpu::Buffer>>>>,
}

impl PendingCheckpoint {
    /// Whether every copy is mapped (or failed), so that [`PendingCheckpoint::wait`] returns
    /// at once. Polls the device without blocking.
    pub fn is_ready(&self) -> bool {
        let _ = self.context.device().poll(wgpu::PollType::Poll);
        self.mapping.settled()
    }

    /// The checkpoint, once the copies are mapped. Waits for the GPU. An encoder that was
    /// never submitted, a failed mapping or a lost device is an error. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self) -> Result<Checkpoint> {
        pollster::block_on(self.wait_async())
    }

    /// [`PendingCheckpoint::wait`] as a future, for a browser; natively it waits in place, as that
    /// does.
    pub async fn wait_async(self) -> Result<Checkpoint> {
        if !self.is_ready() {
            // Not `wait_async`: an earlier call's error is that call's to report, and the
            // copies, once mapped, are good.
            self.context.work_done().await?;
            // In a browser the copies map after the GPU's work, once the encoder was
            // submitted; one that was not is reported below.
            if self.staging.iter().any(mapping_requested) {
                self.mapping.settled_async().await;
            }
        }
        let failed = |message: String| Error::Gpu {
            operation: "mapping a checkpoint's copies",
            message,
        };
        {
            let mapping = self.mapping.outcome();
            if let Some(error) = &mapping.error {
                return Err(failed(error.clone()));
            }
            if mapping.fired < self.staging.len() {
                return Err(failed(
                    "the encoder holding them was not submitted: submit it, then wait".into(),
                ));
            }
        }
        // Each piece cut straight out of its mapped copy; the status copied whole.
        let status_staging = match &self.applied {
            Applied::Device { staging, .. } => Some(*staging),
            Applied::Known(..) => None,
        };
        let mut tensors = self.tensors;
        let mut metadata = self.metadata;
        let mut pieces = self.pieces;
        pieces.sort_by_key(|piece| piece.staging);
        let mut pieces = pieces.into_iter().peekable();
        let mut status_bytes = Vec::new();
        for (index, buffer) in self.staging.iter().enumerate() {
            {
                let view = buffer
                    .get_mapped_range(..)
                    .map_err(|e| failed(e.to_string()))?;
                while let Some(piece) = pieces.next_if(|piece| piece.staging == index) {
                    let tensor = HostTensor {
                        dtype: piece.dtype,
                        shape: vec![piece.count],
                        data: view[piece.bytes].to_vec(),
                    };
                    tensors.insert(piece.name, tensor);
                }
                if status_staging == Some(index) {
                    status_bytes = view.to_vec();
                }
            }
            buffer.unmap();
        }
        // Only the copies of the checkpoint read last are kept: one copy of the state at most.
        if let Some(keep) = &self.keep {
            *keep.lock().expect("not poisoned") = self.staging;
        }
        let (applied, host) = match self.applied {
            Applied::Known(applied, host) => (applied, host),
            Applied::Device {
                history,
                fallback,
                scaling,
                ..
            } => {
                let status =
                    GradStatus::from(bytemuck::pod_read_unaligned::<StatusWords>(&status_bytes));
                tensors.insert(
                    "fused_optim.grad_status".to_owned(),
                    HostTensor::vector(TensorDtype::U32, status_bytes),
                );
                if scaling {
                    let (scale, tracker) = scaler_state(&status);
                    metadata.insert(format!("{SCALER_PREFIX}scale"), scale);
                    metadata.insert(format!("{SCALER_PREFIX}_growth_tracker"), tracker);
                }
                let applied = status.applied as u64;
                let host = history.after(applied).cloned().unwrap_or(fallback);
                (applied, host)
            }
        };
        for (name, group) in self.counted {
            if self.counts_steps {
                tensors.insert(
                    format!("state.{name}.step"),
                    HostTensor::scalar_f32(applied as f32),
                );
            }
            for (host_name, value) in self.host_names.iter().zip(&host[group]) {
                tensors.insert(
                    format!("state.{name}.{host_name}"),
                    HostTensor::scalar_f64(*value),
                );
            }
        }
        metadata.insert("fused_optim.applied".to_owned(), applied.to_string());
        Ok(Checkpoint { tensors, metadata })
    }

    /// Waits for the copies and writes the checkpoint to `path` crash-safely (see
    /// [`Checkpoint::save`]). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.wait()?.save(path)
    }
}

impl<R: UpdateRule> Engine<R> {
    /// The states some group keeps, by PyTorch name.
    pub fn state_names(&self) -> Vec<&'static str> {
        crate::rule::state_names(&self.groups)
    }

    /// Whether slot `slot` is never negative (and so coded with the unsigned map).
    fn non_negative(slot: usize) -> bool {
        R::NON_NEGATIVE.contains(&R::STATE_SLOTS[slot])
    }

    /// The per-element state group `group` keeps, as checkpoints store it (besides `step`).
    fn stored(&self, group: usize) -> Vec<Stored> {
        let formats = &self.formats[group];
        let mut stored = Vec::new();
        let mut push = |suffix: String, role, dtype, packed| {
            stored.push(Stored {
                suffix,
                role,
                dtype,
                packed,
            })
        };
        match formats.master {
            Master::None => {}
            Master::F32 => push("master".into(), Role::Master, TensorDtype::F32, 1),
            Master::Bf16Remainder => {
                push("master_remainder".into(), Role::Master, TensorDtype::U16, 1)
            }
            Master::Bf16Correction => {
                push("master_correction".into(), Role::Master, TensorDtype::U8, 1)
            }
        }
        for (slot, format) in formats.slots.iter().enumerate() {
            let Some(format) = format else { continue };
            let name = R::STATE_SLOTS[slot].to_owned();
            match format.layout() {
                Layout::Elements(dtype) => push(name, Role::Slot(slot), TensorDtype::of(dtype), 1),
                Layout::Blocks(block) => {
                    push(
                        format!("{name}.scale"),
                        Role::Scales(slot),
                        scale_dtype(block),
                        1,
                    );
                    let packed = 8 / block.code.bits as u64;
                    push(name, Role::Slot(slot), TensorDtype::U8, packed);
                }
            }
        }
        stored
    }

    /// The slots some group keeps in blocks, each with its code's kind (`signed` or
    /// `unsigned`, the rule's, whatever the width).
    fn coded_slots(&self) -> BTreeMap<&'static str, &'static str> {
        self.block_formats()
            .into_iter()
            .map(|(slot, _)| {
                let kind = match Self::non_negative(slot) {
                    true => "unsigned",
                    false => "signed",
                };
                (R::STATE_SLOTS[slot], kind)
            })
            .collect()
    }

    /// Every (slot, block format) some group keeps.
    fn block_formats(&self) -> BTreeSet<(usize, StateFormat)> {
        self.formats
            .iter()
            .flat_map(|formats| formats.slots.iter().enumerate())
            .filter_map(|(slot, format)| format.map(|f| (slot, f)))
            .filter(|(_, format)| format.blocks().is_some())
            .collect()
    }

    /// The code tables of the block slots' kinds and widths (each code's value in a block of
    /// scale 1), by their tensor names: `<kind>` for 8-bit codes, `<kind><bits>` for others
    /// (the block scheme's code is its width's).
    fn used_tables(&self) -> BTreeMap<String, Vec<f32>> {
        self.block_formats()
            .into_iter()
            .filter_map(|(slot, format)| Some((slot, format.blocks()?.code)))
            .map(|(slot, code)| {
                let non_negative = Self::non_negative(slot);
                let kind = if non_negative { "unsigned" } else { "signed" };
                (table_name(kind, code.bits), code.table(non_negative))
            })
            .collect()
    }

    /// Every group's hyperparameters and formats, each tensor's group, index in its group and
    /// elements, the 8-bit slots' maps and the steps recorded, as checkpoint metadata.
    fn checkpoint_metadata(&self, tensors: &[NamedTensor]) -> BTreeMap<String, String> {
        let mut metadata = BTreeMap::new();
        metadata.insert(VERSION_KEY.to_owned(), FORMAT_VERSION.to_string());
        metadata.insert("fused_optim.rule".to_owned(), R::CHECKPOINT_NAME.to_owned());
        metadata.insert("fused_optim.steps".to_owned(), self.steps.to_string());
        if let Some(guarded) = &self.guard {
            // Whether the status's scale scales the grads: a checkpoint of a scaled run must
            // not resume unscaled, nor the reverse.
            let scaling = guarded.device.settings.skips();
            metadata.insert("fused_optim.loss_scaling".to_owned(), scaling.to_string());
            // The scaler's settings under torch.amp.GradScaler's state_dict names (its scale
            // and growth tracker join them once the status is read).
            if let Some(scaler) = guarded.device.settings.scaler.filter(|s| s.enabled) {
                for (key, value) in [
                    ("growth_factor", format!("{:?}", scaler.growth_factor)),
                    ("backoff_factor", format!("{:?}", scaler.backoff_factor)),
                    ("growth_interval", scaler.growth_interval.to_string()),
                ] {
                    metadata.insert(format!("{SCALER_PREFIX}{key}"), value);
                }
            }
        }
        for (g, (rule, precision)) in self.groups.iter().zip(&self.precisions).enumerate() {
            metadata.insert(
                format!("{GROUP_PREFIX}{g}.precision"),
                precision.to_string(),
            );
            for (name, value) in rule.hyperparameters() {
                metadata.insert(
                    format!("param_groups.{g}.{name}"),
                    hyperparameter_text(value),
                );
            }
            for (slot, format) in R::STATE_SLOTS.iter().zip(&self.formats[g].slots) {
                if let Some(block) = format.and_then(|f| f.blocks()) {
                    metadata.insert(layout_key(g, slot), layout_text(block));
                }
            }
        }
        for tensor in tensors {
            let group = self.spans[tensor.span].group;
            metadata.insert(
                format!("{PARAM_PREFIX}{}", tensor.name),
                format!("{group}:{}:{}", tensor.index, tensor.elements),
            );
        }
        if let Some(shard) = &self.shard {
            let text = format!("{}:{}:{}", shard.start, shard.end, self.lens[0]);
            metadata.insert(SHARD_KEY.to_owned(), text);
            for tensor in tensors {
                metadata.insert(
                    format!("{PIECE_PREFIX}{}", tensor.name),
                    format!("{}:{}", tensor.skip, tensor.len),
                );
            }
        }
        let coded = self.coded_slots();
        if !coded.is_empty() {
            metadata.insert(BLOCK_KEY.to_owned(), BLOCK.to_string());
        }
        for (slot, kind) in coded {
            metadata.insert(format!("{QMAP_PREFIX}{slot}"), kind.to_owned());
        }
        metadata
    }

    /// Records copies of every state buffer (and the grad guard's status) into `encoder`,
    /// mapped when its submission completes, and returns what builds the checkpoint from them,
    /// each tensor of `tensors` named as it says. Creates the staging buffers; records nothing
    /// if that fails.
    pub fn record_checkpoint(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        tensors: &[NamedTensor],
    ) -> Result<PendingCheckpoint> {
        // Steps in `encoder` precede the copies; every other must be submitted already.
        let within = Ahead::Recorded(encoder_id(encoder));
        let operation = "recording a checkpoint into another encoder";
        self.submissions.check(&self.context, within, operation)?;
        // What writes the state in a submission of its own must wait for these copies.
        let marker = self.submissions.marker(&self.context)?;
        let pending = self.record_copies(encoder, tensors, true)?;
        self.submissions
            .record(encoder, marker, Work::Checkpoint(self.steps));
        Ok(pending)
    }

    /// [`Engine::record_checkpoint`]; where `keep`, the copies are taken from and given back
    /// to the optimizer's kept ones, for a training loop that checkpoints again and again.
    fn record_copies(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        tensors: &[NamedTensor],
        keep: bool,
    ) -> Result<PendingCheckpoint> {
        let mut sources: Vec<&wgpu::Buffer> = Vec::new();
        // Each span's first source, then the status's.
        let mut first = Vec::with_capacity(self.owned.len());
        for owned in &self.owned {
            first.push(sources.len());
            sources.extend(owned.iter().map(|(_, buffer)| buffer));
        }
        let status_source = self.guard.as_ref().map(|guarded| {
            sources.push(guarded.device.status());
            sources.len() - 1
        });
        // The last checkpoint's copies where their sizes fit, new buffers for the rest.
        let mut kept = match keep {
            true => std::mem::take(&mut *self.checkpoint_copies.lock().expect("not poisoned")),
            false => Vec::new(),
        };
        let device = self.context.device();
        let staging = self
            .context
            .scoped("allocating a checkpoint's copies", || {
                sources
                    .iter()
                    .map(
                        |source| match kept.iter().position(|b| b.size() == source.size()) {
                            Some(index) => kept.swap_remove(index),
                            None => device.create_buffer(&wgpu::BufferDescriptor {
                                label: Some("fused-optim checkpoint copy"),
                                size: source.size(),
                                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                                mapped_at_creation: false,
                            }),
                        },
                    )
                    .collect::<Vec<_>>()
            })?;
        let mapping = Callbacks::new(staging.len());
        for (source, copy) in sources.iter().zip(&staging) {
            encoder.copy_buffer_to_buffer(source, 0, copy, 0, source.size());
            encoder.map_buffer_on_submit(copy, wgpu::MapMode::Read, .., mapping.callback(|| {}));
        }
        let mut pieces = Vec::new();
        for tensor in tensors {
            let span = tensor.span;
            for stored in self.stored(self.spans[span].group) {
                let index = self.owned[span]
                    .iter()
                    .position(|(role, _)| *role == stored.role)
                    .expect("a kept state has a buffer");
                let (bytes, count) = stored.range(tensor.offset, tensor.len);
                pieces.push(Piece {
                    name: format!("state.{}.{}", tensor.name, stored.suffix),
                    staging: first[span] + index,
                    bytes,
                    dtype: stored.dtype,
                    count,
                });
            }
        }
        let applied = match (&self.guard, status_source) {
            (Some(guarded), Some(staging)) => Applied::Device {
                staging,
                history: guarded.history.clone(),
                scaling: guarded.device.settings.skips(),
                fallback: self.host.clone(),
            },
            _ => Applied::Known(self.steps, self.host.clone()),
        };
        let maps = self
            .used_tables()
            .into_iter()
            .map(|(name, table)| {
                let data = bytemuck::cast_slice(&table).to_vec();
                (name, HostTensor::vector(TensorDtype::F32, data))
            })
            .collect();
        Ok(PendingCheckpoint {
            context: self.context.clone(),
            staging,
            mapping,
            pieces,
            counted: tensors
                .iter()
                .map(|t| (t.name.clone(), self.spans[t.span].group))
                .collect(),
            counts_steps: R::COUNTS_STEPS,
            host_names: R::HOST_STATE,
            applied,
            tensors: maps,
            metadata: self.checkpoint_metadata(tensors),
            keep: keep.then(|| Arc::clone(&self.checkpoint_copies)),
        })
    }

    /// The state as a checkpoint, each tensor named as `tensors` says: every kept slot in its
    /// stored form (8-bit codes with their absmax), the master, `step` (the steps applied),
    /// the rule's host state (NAdam's `mu_product`), the grad guard's status, and metadata.
    /// Waits for the GPU.
    pub async fn checkpoint(&self, tensors: &[NamedTensor]) -> Result<Checkpoint> {
        // The copies go in a submission of their own: every step must be ahead of it.
        self.submissions
            .check(&self.context, Ahead::Read, "taking a checkpoint")?;
        let mut encoder = self
            .context
            .device()
            .create_command_encoder(&Default::default());
        let pending = self.record_copies(&mut encoder, tensors, false)?;
        self.context.queue().submit([encoder.finish()]);
        pending.wait_async().await
    }

    /// [`Engine::checkpoint`] written to a safetensors file at `path` crash-safely.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: &std::path::Path, tensors: &[NamedTensor]) -> Result<()> {
        pollster::block_on(self.checkpoint(tensors))?.save(path)
    }

    /// [`Engine::restore`] from the safetensors file at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(&mut self, path: &std::path::Path, tensors: &[NamedTensor]) -> Result<()> {
        self.restore(&Checkpoint::load(path)?, tensors)
    }

    /// Restores `checkpoint`, made by [`Engine::checkpoint`] of an optimizer of the same rule,
    /// tensors, formats and flags, its tensors named as `tensors` says: the hyperparameters,
    /// every state, the master, the step counts and the guard's status. Elements between
    /// tensors (a layout's alignment) are given their initial state. Everything is checked
    /// first; on error nothing changed.
    pub fn restore(&mut self, checkpoint: &Checkpoint, tensors: &[NamedTensor]) -> Result<()> {
        self.check_restorable(checkpoint)?;
        let ours = self.checkpoint_metadata(tensors);
        let rule = checkpoint.meta("fused_optim.rule")?;
        if rule != ours["fused_optim.rule"] {
            return Err(Error::CheckpointMismatch {
                reason: format!(
                    "it is a checkpoint of {rule}, this optimizer is {}",
                    ours["fused_optim.rule"]
                ),
            });
        }
        check_tensors(checkpoint, &ours, self.shard.is_some())?;
        let (steps, applied) = self.restored_counts(checkpoint)?;
        let groups = self.restored_groups(checkpoint)?;
        // Every tensor of the checkpoint this restore reads.
        let mut expected = self.check_code_tables(checkpoint)?;
        let (contents, host) =
            self.restored_contents(checkpoint, tensors, &groups, applied, &mut expected)?;
        let status = self.restored_status(checkpoint, &ours, applied, &mut expected)?;
        // A shard takes its parts of a whole set's checkpoint and leaves the rest.
        let extra = checkpoint
            .tensors
            .keys()
            .find(|name| !expected.contains(*name) && self.shard.is_none());
        if let Some(extra) = extra {
            return Err(Error::CheckpointMismatch {
                reason: format!("tensor `{extra}` is not state this optimizer keeps"),
            });
        }
        // Everything is checked: write.
        self.write_restored(contents, host, groups, status, (steps, applied));
        Ok(())
    }

    /// Refuses to restore a shard's checkpoint (a part of the state, which only a merge makes
    /// whole), one of a format version this library does not read, or while a step or a
    /// checkpoint's copies wait to be submitted: the state is written ahead of the next
    /// submission, so they would run on the restored state (dropped steps never ran).
    fn check_restorable(&self, checkpoint: &Checkpoint) -> Result<()> {
        if let Some(range) = checkpoint.metadata.get(SHARD_KEY) {
            return Err(Error::CheckpointMismatch {
                reason: format!(
                    "it is the checkpoint of the shard {range} (start:end:len) alone; join \
                     every shard's with Checkpoint::merge and restore that"
                ),
            });
        }
        self.submissions
            .check(&self.context, Ahead::Restore, "restoring a checkpoint")?;
        let version = checkpoint.meta(VERSION_KEY)?;
        if version.parse::<u32>().map_or(true, |v| v > FORMAT_VERSION) {
            return Err(Error::CorruptCheckpoint {
                reason: format!("format version `{version}` is not one this library reads"),
            });
        }
        Ok(())
    }

    /// The checkpoint's steps recorded and steps applied, where they agree: only a guard
    /// skips steps, and the device counts a guarded optimizer's in 32 bits.
    fn restored_counts(&self, checkpoint: &Checkpoint) -> Result<(u64, u64)> {
        let corrupt = |reason: String| Error::CorruptCheckpoint { reason };
        let count = |key: &str| -> Result<u64> {
            let text = checkpoint.meta(key)?;
            text.parse()
                .map_err(|_| corrupt(format!("`{key}` = `{text}` is not a count")))
        };
        let (steps, applied) = (count("fused_optim.steps")?, count("fused_optim.applied")?);
        let consistent = match self.guard {
            // Only a guard skips steps.
            None => applied == steps,
            Some(_) => applied <= steps && steps <= u32::MAX as u64,
        };
        match consistent {
            true => Ok((steps, applied)),
            false => Err(corrupt(format!("{applied} steps applied of {steps}"))),
        }
    }

    /// Every group's rule with the checkpoint's hyperparameters, where the group is stored in
    /// the same precision and the rule validates with the same flags.
    fn restored_groups(&self, checkpoint: &Checkpoint) -> Result<Vec<R>> {
        let mismatch = |reason: String| Error::CheckpointMismatch { reason };
        let mut groups = self.groups.clone();
        for (g, rule) in groups.iter_mut().enumerate() {
            let key = format!("{GROUP_PREFIX}{g}.precision");
            let precision = checkpoint.meta(&key)?;
            if precision != self.precisions[g].to_string() {
                return Err(mismatch(format!(
                    "group {g} is stored as `{precision}`, this optimizer's as `{}`",
                    self.precisions[g]
                )));
            }
            for (name, like) in rule.hyperparameters() {
                let key = format!("param_groups.{g}.{name}");
                let text = checkpoint.meta(&key)?;
                let value =
                    parse_hyperparameter(text, like).ok_or_else(|| Error::CorruptCheckpoint {
                        reason: format!("`{key}` = `{text}` is not {}", like.kind()),
                    })?;
                rule.set_hyperparameter(name, value)?;
            }
            rule.validate()?;
            if rule.flags() != self.groups[g].flags() {
                return Err(mismatch(format!(
                    "group {g}'s flags differ ({:?} against {:?}); build the optimizer with the \
                     checkpoint's configuration",
                    rule.flags(),
                    self.groups[g].flags()
                )));
            }
        }
        Ok(groups)
    }

    /// Checks that the checkpoint's blocks are of this library's size and that it holds this
    /// library's code table of every block format the groups keep; returns the tables' names.
    fn check_code_tables(&self, checkpoint: &Checkpoint) -> Result<BTreeSet<String>> {
        let mismatch = |reason: String| Error::CheckpointMismatch { reason };
        let tables = self.used_tables();
        if !tables.is_empty() && checkpoint.meta(BLOCK_KEY)? != BLOCK.to_string() {
            return Err(mismatch(format!(
                "its 8-bit blocks are of {} elements, this library's of {BLOCK} (expand it to \
                 f32 with the library that wrote it, then restore into f32 state)",
                checkpoint.meta(BLOCK_KEY)?
            )));
        }
        let mut names = BTreeSet::new();
        for (name, table) in tables {
            let data = checkpoint.tensor(&name, TensorDtype::F32, &[table.len()])?;
            if data != bytemuck::cast_slice::<f32, u8>(&table) {
                return Err(mismatch(format!(
                    "`{name}` is not this library's 8-bit code table"
                )));
            }
            names.insert(name);
        }
        Ok(names)
    }

    /// Each span's buffers as they will be, the initial state of `groups` overwritten by each
    /// tensor's state in the checkpoint, and each group's host state (empty for a group
    /// without a tensor), every value checked; each tensor read is added to `expected`.
    fn restored_contents(
        &self,
        checkpoint: &Checkpoint,
        tensors: &[NamedTensor],
        groups: &[R],
        applied: u64,
        expected: &mut BTreeSet<String>,
    ) -> Result<(Vec<SpanContents>, Vec<Vec<f64>>)> {
        let mut contents: Vec<SpanContents> = self
            .spans
            .iter()
            .map(|span| {
                let group = span.group;
                let len = span.end - span.start;
                initial_contents(&groups[group], &self.formats[group], len)
            })
            .collect();
        let mut host = vec![Vec::new(); self.groups.len()];
        for tensor in tensors {
            let group = self.spans[tensor.span].group;
            for stored in self.stored(group) {
                let (name, data) = self.restored_values(checkpoint, tensor, group, &stored)?;
                let (bytes, _) = stored.range(tensor.offset, tensor.len);
                let (_, buffer) = contents[tensor.span]
                    .iter_mut()
                    .find(|(role, _)| *role == stored.role)
                    .expect("a kept state has contents");
                buffer[bytes].copy_from_slice(data);
                expected.insert(name);
            }
            if R::COUNTS_STEPS {
                expected.insert(check_restored_step(checkpoint, tensor, applied)?);
            }
            host[group] = R::HOST_STATE
                .iter()
                .map(|host_name| {
                    let key = format!("state.{}.{host_name}", tensor.name);
                    let data = checkpoint.tensor(&key, TensorDtype::F64, &[])?;
                    check_values(&key, TensorDtype::F64, data, false)?;
                    expected.insert(key);
                    Ok(f64::from_le_bytes(data.try_into().expect("8 bytes")))
                })
                .collect::<Result<Vec<f64>>>()?;
        }
        Ok((contents, host))
    }

    /// The checkpoint's name and bytes of `stored`, a state of `tensor` (of group `group`):
    /// the part of the whole tensor's state that `tensor` covers, its values checked.
    fn restored_values<'c>(
        &self,
        checkpoint: &'c Checkpoint,
        tensor: &NamedTensor,
        group: usize,
        stored: &Stored,
    ) -> Result<(String, &'c [u8])> {
        let name = format!("state.{}.{}", tensor.name, stored.suffix);
        // The whole tensor's state, of which a shard takes its part.
        let (_, count) = stored.range(0, tensor.elements);
        let whole = checkpoint.tensor(&name, stored.dtype, &[count])?;
        let data = &whole[stored.range(tensor.skip, tensor.len).0];
        let non_negative = match stored.role {
            Role::Slot(slot) => Self::non_negative(slot),
            _ => matches!(stored.role, Role::Scales(_)),
        };
        check_values(&name, stored.dtype, data, non_negative)?;
        if let Role::Scales(slot) = stored.role {
            let format = self.formats[group].slots[slot].and_then(|f| f.blocks());
            check_finite(&name, format.expect("scales are a block format's"), data)?;
        }
        Ok((name, data))
    }

    /// The grad guard's status in the checkpoint, where this optimizer has a guard and the
    /// checkpoint a status (either both or neither): made with the same loss scaling, agreeing
    /// with the scaler's state in the metadata and with the steps `applied`. Adds it to
    /// `expected`.
    fn restored_status(
        &self,
        checkpoint: &Checkpoint,
        ours: &BTreeMap<String, String>,
        applied: u64,
        expected: &mut BTreeSet<String>,
    ) -> Result<Option<GradStatus>> {
        let mismatch = |reason: String| Error::CheckpointMismatch { reason };
        let corrupt = |reason: String| Error::CorruptCheckpoint { reason };
        match (
            &self.guard,
            checkpoint.tensors.get("fused_optim.grad_status"),
        ) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                let key = "fused_optim.loss_scaling";
                let (theirs, ours) = (checkpoint.meta(key)?, &ours[key]);
                if theirs != ours {
                    return Err(mismatch(format!(
                        "it was made with loss scaling {theirs}, this optimizer's guard has it \
                         {ours}; set a guard with the checkpoint's scaler before restoring"
                    )));
                }
                let words = std::mem::size_of::<StatusWords>() / 4;
                let data =
                    checkpoint.tensor("fused_optim.grad_status", TensorDtype::U32, &[words])?;
                let status = GradStatus::from(bytemuck::pod_read_unaligned::<StatusWords>(data));
                let scale = status.scale;
                let (scale_text, tracker_text) = scaler_state(&status);
                for (key, want) in [("scale", scale_text), ("_growth_tracker", tracker_text)] {
                    let key = format!("{SCALER_PREFIX}{key}");
                    match checkpoint.metadata.get(&key) {
                        Some(text) if *text != want => {
                            return Err(corrupt(format!(
                                "`{key}` = `{text}` disagrees with the grad status's `{want}`"
                            )))
                        }
                        _ => {}
                    }
                }
                if status.applied as u64 != applied || !(scale.is_finite() && scale > 0.0) {
                    return Err(corrupt(
                        "the grad status disagrees with the steps applied".into(),
                    ));
                }
                expected.insert("fused_optim.grad_status".to_owned());
                Ok(Some(status))
            }
            (Some(_), None) => Err(mismatch(
                "it has no grad guard status; restore it into an optimizer without a guard, \
                 then set the guard"
                    .into(),
            )),
            (None, Some(_)) => Err(mismatch(
                "it holds a grad guard's status; set the guard (`with_grad_guard`) before \
                 restoring"
                    .into(),
            )),
        }
    }

    /// Writes a checked restore: each span's buffers' `contents`, the `groups`' rules and
    /// `host` state (the initial one where empty), the guard's `status` where it has one, and
    /// the counts of steps recorded and applied. Forgets unsubmitted work, which never ran.
    fn write_restored(
        &mut self,
        contents: Vec<SpanContents>,
        mut host: Vec<Vec<f64>>,
        groups: Vec<R>,
        status: Option<GradStatus>,
        (steps, applied): (u64, u64),
    ) {
        let queue = self.context.queue();
        for (span, contents) in contents.into_iter().enumerate() {
            for (role, bytes) in contents {
                let buffer = self.owned_buffer(span, role).expect("allocated");
                queue.write_buffer(buffer, 0, &bytes);
            }
        }
        // Groups without a tensor (and rules without host state) keep their initial state.
        for (g, state) in host.iter_mut().enumerate() {
            if state.is_empty() {
                *state = groups[g].initial_host_state();
            }
        }
        if let (Some(guarded), Some(status)) = (&mut self.guard, status) {
            let words = StatusWords::from(status);
            queue.write_buffer(guarded.device.status(), 0, bytemuck::bytes_of(&words));
            guarded.device.restart(steps, applied as u32, status.scale);
            guarded.history = HostHistory::new(host.clone(), applied);
        }
        self.groups = groups;
        self.host = host;
        self.steps = steps;
        self.submissions.clear();
    }
}

/// The prefix of the loss scaler's state in checkpoint metadata, after
/// `torch.amp.GradScaler.state_dict()`: `grad_scaler.scale`, `grad_scaler._growth_tracker`,
/// `grad_scaler.growth_factor`, ... (the status tensor holds the same, and more).
const SCALER_PREFIX: &str = "grad_scaler.";

/// The status's scale and growth tracker as checkpoint metadata writes them.
fn scaler_state(status: &GradStatus) -> (String, String) {
    (
        format!("{:?}", status.scale),
        status.growth_tracker.to_string(),
    )
}

/// Checks `tensor`'s `step` in the checkpoint against the steps `applied`; returns its name.
fn check_restored_step(
    checkpoint: &Checkpoint,
    tensor: &NamedTensor,
    applied: u64,
) -> Result<String> {
    let key = format!("state.{}.step", tensor.name);
    let data = checkpoint.tensor(&key, TensorDtype::F32, &[])?;
    let step = f32::from_le_bytes(data.try_into().expect("4 bytes"));
    if step != applied as f32 {
        return Err(Error::CorruptCheckpoint {
            reason: format!("`{key}` is {step}, not the {applied} steps applied"),
        });
    }
    Ok(key)
}

/// Checks that the checkpoint has every tensor of `ours`, in the same group with the same
/// elements, and (unless `shard`, which holds only some) no other. Tensors are matched by
/// name, so their order within a group may differ.
fn check_tensors(
    checkpoint: &Checkpoint,
    ours: &BTreeMap<String, String>,
    shard: bool,
) -> Result<()> {
    let mismatch = |reason: String| Error::CheckpointMismatch { reason };
    let (theirs, ours) = (checkpoint.places()?, places(ours)?);
    for (name, place) in &ours {
        match theirs.get(name) {
            None => {
                return Err(mismatch(format!(
                    "it has no tensor `{name}`; its tensors are {:?}",
                    theirs.keys().collect::<Vec<_>>()
                )))
            }
            Some(their) if (their.group, their.elements) != (place.group, place.elements) => {
                return Err(mismatch(format!(
                    "tensor `{name}` is {} elements in group {} there, {} in group {} here",
                    their.elements, their.group, place.elements, place.group
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(name) = theirs
        .keys()
        .find(|name| !ours.contains_key(*name) && !shard)
    {
        return Err(mismatch(format!(
            "it holds tensor `{name}`, which this optimizer does not have"
        )));
    }
    Ok(())
}

/// Refuses float state holding negative values where `non_negative`. Inf and NaN are state a
/// run can reach (one huge finite grad squared overflows `exp_avg_sq`) and that `save`
/// writes: they load as they were, as PyTorch's `load_state_dict` takes them.
fn check_values(name: &str, dtype: TensorDtype, data: &[u8], non_negative: bool) -> Result<()> {
    let values: Vec<f64> = match dtype {
        TensorDtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
            .collect(),
        TensorDtype::Bf16 => data
            .chunks_exact(2)
            .map(|b| Dtype::Bf16.value(u16::from_le_bytes([b[0], b[1]])) as f64)
            .collect(),
        TensorDtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        _ => return Ok(()),
    };
    if non_negative && values.iter().any(|&v| v < 0.0) {
        return Err(Error::CorruptCheckpoint {
            reason: format!("tensor `{name}` holds negative values, where the state never is"),
        });
    }
    Ok(())
}

/// Refuses block scales that are not finite (a bf16 inf or NaN, an exponent byte of 255): the
/// library never writes one, and one would make its whole block non-finite.
fn check_finite(name: &str, format: BlockFormat, data: &[u8]) -> Result<()> {
    let blocks = data.len() / format.scale_bytes() as usize;
    match (0..blocks).all(|block| format.scale(data, block).is_finite()) {
        true => Ok(()),
        false => Err(Error::CorruptCheckpoint {
            reason: format!("tensor `{name}` holds a scale that is not finite"),
        }),
    }
}
