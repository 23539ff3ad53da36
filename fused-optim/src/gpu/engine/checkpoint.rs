//! Checkpoints of the engine's state: what each span keeps as named host tensors, the
//! metadata of groups and layout, and the checked restore. A child of the engine, for its
//! fields; the file format itself is src/checkpoint.rs.

use std::collections::{BTreeMap, BTreeSet};

use super::Engine;
use crate::checkpoint::{Checkpoint, HostTensor, TensorDtype, FORMAT_VERSION, VERSION_KEY};
use crate::error::{Error, Result};
use crate::format::{Dtype, Master, StateFormat, BLOCK};
use crate::gpu::glue::Role;
use crate::guard::GradStatus;
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

/// One tensor a checkpoint of an engine holds for a span: its name, where its bytes live and
/// how many of them are the tensor's (buffers are padded to whole words).
struct SpanTensor {
    name: String,
    role: Role,
    dtype: TensorDtype,
    elements: usize,
}

impl<R: UpdateRule> Engine<R> {
    /// The rule's name as checkpoints record it: its type.
    fn rule_key() -> &'static str {
        std::any::type_name::<R>()
            .rsplit("::")
            .next()
            .unwrap_or_default()
    }

    /// The tensors span `span`, named `name`, keeps in a checkpoint (besides `step`).
    fn span_tensors(&self, span: usize, name: &str) -> Vec<SpanTensor> {
        let len = (self.spans[span].end - self.spans[span].start) as usize;
        let formats = &self.formats[self.spans[span].group];
        let mut tensors = Vec::new();
        match formats.master {
            Master::None => {}
            Master::F32 => tensors.push(SpanTensor {
                name: format!("state.{name}.master"),
                role: Role::Master,
                dtype: TensorDtype::F32,
                elements: len,
            }),
            Master::Bf16Remainder => tensors.push(SpanTensor {
                name: format!("state.{name}.master_remainder"),
                role: Role::Master,
                dtype: TensorDtype::U16,
                elements: len,
            }),
        }
        for (slot, format) in formats.slots.iter().enumerate() {
            let Some(format) = format else { continue };
            let slot_name = format!("state.{name}.{}", R::STATE_SLOTS[slot]);
            let dtype = match format {
                StateFormat::F32 => TensorDtype::F32,
                StateFormat::Bf16 => TensorDtype::Bf16,
                StateFormat::Block8 => TensorDtype::U8,
            };
            if *format == StateFormat::Block8 {
                tensors.push(SpanTensor {
                    name: format!("{slot_name}.absmax"),
                    role: Role::Absmax(slot),
                    dtype: TensorDtype::F32,
                    elements: len.div_ceil(BLOCK as usize),
                });
            }
            tensors.push(SpanTensor {
                name: slot_name,
                role: Role::Slot(slot),
                dtype,
                elements: len,
            });
        }
        tensors
    }

    /// Every group's hyperparameters and formats, the layout and the counts, as checkpoint
    /// metadata.
    fn checkpoint_metadata(&self) -> BTreeMap<String, String> {
        let mut metadata = BTreeMap::new();
        metadata.insert(VERSION_KEY.to_owned(), FORMAT_VERSION.to_string());
        metadata.insert("fused_optim.rule".to_owned(), Self::rule_key().to_owned());
        let lens: Vec<String> = self.lens.iter().map(u64::to_string).collect();
        metadata.insert("fused_optim.lens".to_owned(), lens.join(","));
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|s| format!("{}:{}:{}:{}", s.target, s.group, s.start, s.end))
            .collect();
        metadata.insert("fused_optim.spans".to_owned(), spans.join(","));
        metadata.insert("fused_optim.steps".to_owned(), self.steps.to_string());
        for (g, (rule, precision)) in self.groups.iter().zip(&self.precisions).enumerate() {
            metadata.insert(
                format!("fused_optim.group.{g}.precision"),
                precision.to_string(),
            );
            for (name, value) in rule.hyperparameters() {
                metadata.insert(
                    format!("param_groups.{g}.{name}"),
                    hyperparameter_text(value),
                );
            }
        }
        metadata
    }

    /// The state as a checkpoint, each span named by `names`: every kept slot in its stored
    /// form (8-bit codes with their absmax), the master, `step` (the steps applied), the
    /// rule's host state (NAdam's `mu_product`), the grad guard's status, and metadata.
    /// Waits for the GPU.
    pub fn checkpoint(&self, names: &[String]) -> Result<Checkpoint> {
        let (applied, host) = self.applied()?;
        let mut tensors = BTreeMap::new();
        for (span, name) in names.iter().enumerate() {
            for tensor in self.span_tensors(span, name) {
                let buffer = self.owned_buffer(span, tensor.role).expect("allocated");
                let mut data = self.context.download_bytes(buffer)?;
                data.truncate(tensor.elements * tensor.dtype.bytes());
                tensors.insert(tensor.name, HostTensor::vector(tensor.dtype, data));
            }
            let group = self.spans[span].group;
            if R::COUNTS_STEPS {
                tensors.insert(
                    format!("state.{name}.step"),
                    HostTensor::scalar_f32(applied as f32),
                );
            }
            for (host_name, value) in R::HOST_STATE.iter().zip(&host[group]) {
                tensors.insert(
                    format!("state.{name}.{host_name}"),
                    HostTensor::scalar_f64(*value),
                );
            }
        }
        let mut metadata = self.checkpoint_metadata();
        metadata.insert("fused_optim.applied".to_owned(), applied.to_string());
        if let Some(guarded) = &self.guard {
            let status = guarded.device.read_status()?;
            tensors.insert(
                "fused_optim.grad_status".to_owned(),
                HostTensor::vector(TensorDtype::U32, bytemuck::bytes_of(&status).to_vec()),
            );
        }
        Ok(Checkpoint { tensors, metadata })
    }

    /// Restores `checkpoint`, made by [`Engine::checkpoint`] of an optimizer of the same rule,
    /// layout and formats with spans named `names`: the hyperparameters, every state, the
    /// master, the step counts and the guard's status. Everything is checked first; on error
    /// nothing changed.
    pub fn restore(&mut self, checkpoint: &Checkpoint, names: &[String]) -> Result<()> {
        let mismatch = |reason: String| Error::CheckpointMismatch { reason };
        let corrupt = |reason: String| Error::CorruptCheckpoint { reason };
        let version = checkpoint.meta(VERSION_KEY)?;
        if version.parse::<u32>().map_or(true, |v| v > FORMAT_VERSION) {
            return Err(corrupt(format!(
                "format version `{version}` is not one this library reads"
            )));
        }
        let ours = self.checkpoint_metadata();
        for key in ["fused_optim.rule", "fused_optim.lens", "fused_optim.spans"] {
            let theirs = checkpoint.meta(key)?;
            if theirs != ours[key] {
                return Err(mismatch(format!(
                    "`{key}` is `{theirs}`, this optimizer's `{}`",
                    ours[key]
                )));
            }
        }
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
        if !consistent {
            return Err(corrupt(format!("{applied} steps applied of {steps}")));
        }
        let mut groups = self.groups.clone();
        for (g, rule) in groups.iter_mut().enumerate() {
            let key = format!("fused_optim.group.{g}.precision");
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
                let value = parse_hyperparameter(text, like)
                    .ok_or_else(|| corrupt(format!("`{key}` = `{text}` is not {}", like.kind())))?;
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
        let finite = |name: &str, tensor: &HostTensor| -> Result<()> {
            let bad = match tensor.dtype {
                TensorDtype::F32 => tensor
                    .data
                    .chunks_exact(4)
                    .any(|b| !f32::from_le_bytes(b.try_into().unwrap()).is_finite()),
                TensorDtype::Bf16 => tensor.data.chunks_exact(2).any(|b| {
                    !Dtype::Bf16
                        .value(u16::from_le_bytes([b[0], b[1]]))
                        .is_finite()
                }),
                TensorDtype::F64 => tensor
                    .data
                    .chunks_exact(8)
                    .any(|b| !f64::from_le_bytes(b.try_into().unwrap()).is_finite()),
                _ => false,
            };
            match bad {
                true => Err(corrupt(format!("tensor `{name}` holds inf or NaN"))),
                false => Ok(()),
            }
        };
        let mut expected = BTreeSet::new();
        let mut writes = Vec::new();
        let mut host = vec![Vec::new(); self.groups.len()];
        for (span, name) in names.iter().enumerate() {
            for tensor in self.span_tensors(span, name) {
                let data = checkpoint.tensor(&tensor.name, tensor.dtype, &[tensor.elements])?;
                finite(&tensor.name, &checkpoint.tensors[&tensor.name])?;
                writes.push((span, tensor.role, data));
                expected.insert(tensor.name);
            }
            if R::COUNTS_STEPS {
                let key = format!("state.{name}.step");
                let data = checkpoint.tensor(&key, TensorDtype::F32, &[])?;
                let step = f32::from_le_bytes(data.try_into().expect("4 bytes"));
                if step != applied as f32 {
                    return Err(corrupt(format!(
                        "`{key}` is {step}, not the {applied} steps applied"
                    )));
                }
                expected.insert(key);
            }
            let group = self.spans[span].group;
            host[group] = R::HOST_STATE
                .iter()
                .map(|host_name| {
                    let key = format!("state.{name}.{host_name}");
                    let data = checkpoint.tensor(&key, TensorDtype::F64, &[])?;
                    finite(&key, &checkpoint.tensors[&key])?;
                    expected.insert(key);
                    Ok(f64::from_le_bytes(data.try_into().expect("8 bytes")))
                })
                .collect::<Result<Vec<f64>>>()?;
        }
        let status =
            match (
                &self.guard,
                checkpoint.tensors.get("fused_optim.grad_status"),
            ) {
                (None, None) => None,
                (Some(_), Some(_)) => {
                    let words = std::mem::size_of::<GradStatus>() / 4;
                    let data =
                        checkpoint.tensor("fused_optim.grad_status", TensorDtype::U32, &[words])?;
                    let status: GradStatus = bytemuck::pod_read_unaligned(data);
                    if status.applied as u64 != applied || !status.scale.is_finite() {
                        return Err(corrupt(
                            "the grad status disagrees with the steps applied".into(),
                        ));
                    }
                    expected.insert("fused_optim.grad_status".to_owned());
                    Some(status)
                }
                (Some(_), None) => return Err(mismatch(
                    "it has no grad guard status; restore it into an optimizer without a guard, \
                     then set the guard"
                        .into(),
                )),
                (None, Some(_)) => {
                    return Err(mismatch(
                        "it holds a grad guard's status; set the guard (`with_grad_guard`) before \
                     restoring"
                            .into(),
                    ))
                }
            };
        if let Some(extra) = checkpoint
            .tensors
            .keys()
            .find(|name| !expected.contains(*name))
        {
            return Err(mismatch(format!(
                "tensor `{extra}` is not state this optimizer keeps"
            )));
        }
        // Everything is checked: write.
        let queue = self.context.queue();
        for (span, role, data) in writes {
            let buffer = self.owned_buffer(span, role).expect("allocated");
            let mut padded = data.to_vec();
            padded.resize(buffer.size() as usize, 0);
            queue.write_buffer(buffer, 0, &padded);
        }
        if !R::HOST_STATE.is_empty() {
            // Groups without a span keep their initial host state.
            for (g, state) in host.iter_mut().enumerate() {
                if state.is_empty() {
                    *state = self.groups[g].initial_host_state();
                }
            }
        } else {
            host = vec![Vec::new(); self.groups.len()];
        }
        if let (Some(guarded), Some(status)) = (&mut self.guard, status) {
            queue.write_buffer(guarded.device.status(), 0, bytemuck::bytes_of(&status));
            guarded.device.restart(steps, applied as u32);
            guarded.history = [host.clone()].into();
            guarded.history_base = applied;
        }
        self.groups = groups;
        self.host = host;
        self.steps = steps;
        Ok(())
    }
}
