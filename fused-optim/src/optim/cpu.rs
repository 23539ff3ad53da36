//! [`CpuOptimizer`]: the CPU twin of [`Optimizer`](super::Optimizer), the same rule, step
//! count and state on host slices, performing the shader's f32 operations in its order.

use super::TensorRef;
use crate::error::{Error, Result};
use crate::format::{
    block, codec, correction, Dtype, Master, Precision, Rounding, StateFormat, BLOCK,
};
use crate::guard::{CpuGuard, GradGuard, GradStatus, GradStep};
use crate::rule::{
    find_state, slot_signs, state_names, try_set_lr, twin_element, StateRef, UpdateRule,
};

/// A host state vector of `len` copies of `value`, or `HostOutOfMemory` where the allocator
/// refuses (an absurd length), instead of aborting the process.
fn host_state(len: usize, value: f32) -> Result<Vec<f32>> {
    let mut state = Vec::new();
    state
        .try_reserve_exact(len)
        .map_err(|_| Error::HostOutOfMemory {
            bytes: (len as u64).saturating_mul(4),
        })?;
    state.resize(len, value);
    Ok(state)
}

/// One state slot on the host, stored as its GPU buffers store it.
#[derive(Clone, Debug)]
struct StoredSlot {
    format: StateFormat,
    non_negative: bool,
    values: Vec<u8>,
    /// The scales of a block format's blocks, as its buffer holds them.
    scales: Vec<u8>,
}

/// The CPU twin of [`Optimizer`](crate::Optimizer): the same rule, step count, storage formats
/// and state, on host slices, performing the kernel's f32 operations, conversions and
/// roundings in its order.
#[derive(Clone, Debug)]
pub struct CpuOptimizer<R: UpdateRule> {
    rule: R,
    precision: Precision,
    len: usize,
    steps: u64,
    /// The rule's host state (`Declared::HOST_STATE`) as of step `steps`.
    host: Vec<f64>,
    /// The f32 master, the bf16 remainders or the correction bytes; empty without a master.
    master: Vec<u32>,
    /// One per `R::STATE_SLOTS`, `None` for slots this configuration does not keep.
    state: Vec<Option<StoredSlot>>,
    /// The grad guard's twin, where its steps are guarded.
    guard: Option<CpuGuard>,
}

impl<R: UpdateRule> CpuOptimizer<R> {
    /// Validates `rule` and allocates its state for `len` f32 elements on the host.
    pub fn new(rule: R, len: usize) -> Result<Self> {
        Self::with_precision(rule, Precision::default(), len)
    }

    /// [`CpuOptimizer::new`] with the storage formats of `precision`: the twin of
    /// [`Optimizer::with_precision`](crate::Optimizer::with_precision).
    pub fn with_precision(rule: R, precision: Precision, len: usize) -> Result<Self> {
        rule.validate()?;
        precision.validate(R::STATE_SLOTS)?;
        if len == 0 {
            return Err(Error::EmptyParams);
        }
        let state = slot_signs(R::STATE_SLOTS, R::NON_NEGATIVE)
            .into_iter()
            .enumerate()
            .map(|(slot, (name, non_negative))| {
                if !rule.keeps_state(name) {
                    return Ok(None);
                }
                let format = precision.state_format(name);
                let initial = host_state(len, rule.initial_state(name))?;
                let (values, scales) = format.encode(&initial, non_negative, slot as u32, 0);
                Ok(Some(StoredSlot {
                    format,
                    non_negative,
                    values,
                    scales,
                }))
            })
            .collect::<Result<_>>()?;
        let master = match precision.master {
            Master::None => Vec::new(),
            _ => vec![0; len],
        };
        Ok(Self {
            host: rule.initial_host_state(),
            rule,
            precision,
            len,
            steps: 0,
            master,
            state,
            guard: None,
        })
    }

    /// Puts every later step under `guard`: the twin of
    /// [`Optimizer::with_grad_guard`](crate::Optimizer::with_grad_guard). Each step then
    /// checks its grads with a [`CpuGuard`] first and takes them as it says.
    pub fn with_grad_guard(mut self, guard: GradGuard) -> Result<Self> {
        self.set_grad_guard(guard)?;
        Ok(self)
    }

    /// [`Self::with_grad_guard`] in place, keeping the scaler's state as the GPU optimizer
    /// does; on error nothing changed.
    pub fn set_grad_guard(&mut self, guard: GradGuard) -> Result<()> {
        CpuGuard::install(&mut self.guard, guard, self.steps)
    }

    /// The grad guard's status after the last step (`None` without a guard).
    pub fn grad_status(&self) -> Option<GradStatus> {
        self.guard.as_ref().map(CpuGuard::status)
    }

    /// The loss scale for the next backward pass (`None` without a guard).
    pub fn loss_scale(&self) -> Option<f32> {
        self.grad_status().map(|status| status.scale)
    }

    /// The rule and its hyperparameters.
    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// The storage formats.
    pub fn precision(&self) -> &Precision {
        &self.precision
    }

    /// Steps taken so far (PyTorch's `state["step"]`).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// The states this twin keeps, by PyTorch name.
    pub fn state_names(&self) -> Vec<&'static str> {
        state_names(std::slice::from_ref(&self.rule))
    }

    /// Changes the learning rate from the next step on; a rejected value leaves the old one.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// A state of its one tensor (`0`, or `"0"`), by PyTorch name, decoded to f32; `step`
    /// reads as one element: the twin of [`Optimizer::read_state`](crate::Optimizer::read_state).
    pub fn read_state<'a>(&self, name: &str, tensor: impl Into<TensorRef<'a>>) -> Result<Vec<f32>> {
        tensor.into().numbered(1)?;
        Ok(match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => {
                let stored = self.state[slot].as_ref().expect("a kept slot is stored");
                stored.format.decode(
                    &stored.values,
                    &stored.scales,
                    self.len,
                    stored.non_negative,
                )
            }
            StateRef::Host(index) => vec![self.host[index] as f32],
            StateRef::Step => vec![self.steps as f32],
        })
    }

    /// A state by PyTorch name as its GPU buffers hold it: the values' bytes (8-bit codes,
    /// 16-bit pairs, f32) and, for block state, its blocks' scales (bf16 for 8-bit codes, an
    /// exponent byte for 4-bit ones).
    pub fn state_bytes(&self, name: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => {
                let stored = self.state[slot].as_ref().expect("a kept slot is stored");
                Ok((stored.values.clone(), stored.scales.clone()))
            }
            _ => Err(Error::UnknownState {
                name: name.to_owned(),
                available: "a per-element state".into(),
            }),
        }
    }

    /// The f32 master weights given the current `params` (in the params' format), or `None`
    /// without a master. Before the first step the master is the params themselves.
    pub fn master(&self, params: &[u8]) -> Option<Vec<f32>> {
        let dtype = self.precision.params;
        match self.precision.master {
            Master::None => None,
            Master::F32 if self.steps == 0 => Some(dtype.decode(params, self.len)),
            Master::F32 => Some(
                self.master
                    .iter()
                    .map(|&bits| f32::from_bits(bits))
                    .collect(),
            ),
            Master::Bf16Remainder => Some(
                (0..self.len)
                    .map(|e| codec::join_remainder(half_at(params, e), self.master[e] as u16))
                    .collect(),
            ),
            Master::Bf16Correction => Some(
                (0..self.len)
                    .map(|e| correction::join(half_at(params, e), self.master[e] as u8))
                    .collect(),
            ),
        }
    }

    /// One step of the twin over f32 params and grads (the default precision).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        let (params_len, grads_len) = (params.len() as u64, grads.len() as u64);
        if params_len != grads_len {
            return Err(Error::LengthMismatch {
                tensor: "params".into(),
                params: params_len,
                grads: grads_len,
            });
        }
        self.step_bytes(
            bytemuck::cast_slice_mut(params),
            bytemuck::cast_slice(grads),
        )
    }

    /// One step of the twin over params and grads given as the bytes of buffers in the
    /// precision's formats (what [`Dtype::encode`](crate::Dtype::encode) makes), element by
    /// element in the kernel's order of operations: the prelude's loads, the rule's `update`,
    /// the stores, and for 8-bit state the block's scale once its 32 new values are known.
    /// Under a grad guard ([`Self::with_grad_guard`]) the grads are checked first and a
    /// skipped step changes nothing but the guard's status.
    pub fn step_bytes(&mut self, params: &mut [u8], grads: &[u8]) -> Result<()> {
        self.check_sizes(params, grads)?;
        let step = match &mut self.guard {
            Some(twin) => twin.check(&[&self.precision.grads.decode(grads, self.len)]),
            None => GradStep::PLAIN,
        };
        self.apply(params, grads, &step);
        Ok(())
    }

    /// [`CpuOptimizer::step_bytes`] under a grad guard: the twin of a guarded optimizer's
    /// step, given the [`GradStep`] its [`CpuGuard`](crate::CpuGuard) returned for this step's
    /// grads. A skipped step changes nothing, not even the step count.
    /// Use it where one [`CpuGuard`] checks the grads of many tensors (a foreach list, a
    /// parameter set's groups, as [`CpuParamSet`](crate::CpuParamSet) does); a twin with its
    /// own guard refuses it.
    pub fn step_guarded(
        &mut self,
        params: &mut [u8],
        grads: &[u8],
        guard: &GradStep,
    ) -> Result<()> {
        self.refuse_own_guard()?;
        self.check_sizes(params, grads)?;
        self.apply(params, grads, guard);
        Ok(())
    }

    /// Refuses a step checked by a guard outside this twin where it has a guard of its own,
    /// which would check the grads again.
    fn refuse_own_guard(&self) -> Result<()> {
        match self.guard {
            Some(_) => Err(Error::InvalidGuard {
                reason: "this twin checks its grads with its own guard; call step_bytes".into(),
            }),
            None => Ok(()),
        }
    }

    /// Params and grads of the precision's formats and this twin's length, or the error.
    fn check_sizes(&self, params: &[u8], grads: &[u8]) -> Result<()> {
        let dtypes = (self.precision.params, self.precision.grads);
        check_buffer_sizes(self.len as u64, dtypes, params, grads)
    }

    /// One step over params and grads of the checked sizes, taking the grads as `guard` says:
    /// element by element, each block's new state coded once its values are known.
    fn apply(&mut self, params: &mut [u8], grads: &[u8], guard: &GradStep) {
        if guard.skip {
            return;
        }
        let guard = (*guard != GradStep::PLAIN).then_some(guard);
        let t = self.steps + 1;
        let l2 = self.rule.l2_weight_decay() as f32;
        let mut host = self.host.clone();
        self.rule.advance_host_state(t, &mut host);
        let scalars = self.rule.scalars(t, &host);
        let block = BLOCK as usize;
        let mut values = vec![0.0; self.state.len()];
        // Each kept slot's new values of the block.
        let mut fresh: Vec<Vec<f32>> = vec![Vec::with_capacity(block); self.state.len()];
        for start in (0..self.len).step_by(block) {
            for e in start..(start + block).min(self.len) {
                let mut p = self.load_param(params, e, t);
                let g = self.load_grad(grads, e, guard);
                for (value, slot) in values.iter_mut().zip(&self.state) {
                    *value = slot.as_ref().map_or(0.0, |s| s.load(e));
                }
                twin_element(&self.rule, l2, &scalars, &mut p, g, &mut values);
                for ((value, slot), fresh) in values.iter().zip(&self.state).zip(&mut fresh) {
                    if slot.is_some() {
                        fresh.push(*value);
                    }
                }
                self.store_param(params, e, t, p);
            }
            self.store_block(start, t, &mut fresh);
        }
        self.host = host;
        self.steps = t;
    }

    /// Element `e`'s param as step `t` reads it: the params' value, or the master's where it
    /// holds more (an f32 master from the second step on; a bf16 param joined with its
    /// remainder or correction).
    fn load_param(&self, params: &[u8], e: usize, t: u64) -> f32 {
        match (self.precision.params, self.precision.master) {
            (Dtype::F32, _) => f32_at(params, e),
            (dtype, Master::None) => dtype.value(half_at(params, e)),
            (dtype, Master::F32) if t == 1 => dtype.value(half_at(params, e)),
            (_, Master::F32) => f32::from_bits(self.master[e]),
            (_, Master::Bf16Remainder) => {
                codec::join_remainder(half_at(params, e), self.master[e] as u16)
            }
            (_, Master::Bf16Correction) => {
                correction::join(half_at(params, e), self.master[e] as u8)
            }
        }
    }

    /// Element `e`'s grad as the rule receives it: decoded, then taken as `guard` says where
    /// the step is guarded.
    fn load_grad(&self, grads: &[u8], e: usize, guard: Option<&GradStep>) -> f32 {
        let g = match self.precision.grads {
            Dtype::F32 => f32_at(grads, e),
            dtype => dtype.value(half_at(grads, e)),
        };
        guard.map_or(g, |guard| guard.grad(g))
    }

    /// Stores element `e`'s new param `p` of step `t` in the params' format, rounded as the
    /// precision says, and what the master keeps of it.
    fn store_param(&mut self, params: &mut [u8], e: usize, t: u64, p: f32) {
        match (self.precision.params, self.precision.master) {
            (Dtype::F32, _) => params[4 * e..4 * e + 4].copy_from_slice(&p.to_le_bytes()),
            (dtype, Master::None) => {
                let bits = match (self.precision.rounding, dtype) {
                    (Rounding::NearestEven, _) => dtype.nearest(p),
                    (Rounding::Stochastic, Dtype::F16) => {
                        codec::f16_stochastic(p, codec::random_bits(e as u32, t as u32))
                    }
                    (Rounding::Stochastic, _) => {
                        codec::bf16_stochastic(p, codec::random_bits(e as u32, t as u32))
                    }
                };
                set_half(params, e, bits);
            }
            (dtype, Master::F32) => {
                self.master[e] = p.to_bits();
                set_half(params, e, dtype.nearest(p));
            }
            (_, Master::Bf16Remainder) => {
                let (param, remainder) = codec::split_remainder(p);
                self.master[e] = remainder as u32;
                set_half(params, e, param);
            }
            (_, Master::Bf16Correction) => {
                let (param, code) = correction::split(p, e as u32, t as u32);
                self.master[e] = code as u32;
                set_half(params, e, param);
            }
        }
    }

    /// Stores the new values of the block from element `start` of each kept slot (`fresh`,
    /// emptied for the next block), rounding block codes with step `t`'s random points.
    fn store_block(&mut self, start: usize, t: u64, fresh: &mut [Vec<f32>]) {
        for (index, (slot, fresh)) in self.state.iter_mut().zip(fresh).enumerate() {
            if let Some(slot) = slot {
                let stream = block::Stream {
                    first: start as u32,
                    step: t as u32,
                    slot: index as u32,
                };
                slot.store(stream, fresh);
            }
            fresh.clear();
        }
    }
}

impl StoredSlot {
    /// Element `e`'s value, decoded.
    fn load(&self, e: usize) -> f32 {
        self.format
            .value_at(&self.values, &self.scales, e, self.non_negative)
    }

    /// Stores the new values of one block, of the elements from `stream.first`, rounding
    /// block codes with `stream`'s random points.
    fn store(&mut self, stream: block::Stream, values: &[f32]) {
        self.format.store(
            values,
            self.non_negative,
            stream,
            &mut self.values,
            &mut self.scales,
        )
    }
}

/// `params` and `grads` as the bytes of `len` elements in the (params, grads) formats
/// `dtypes`, or the error.
pub(super) fn check_buffer_sizes(
    len: u64,
    (params_dtype, grads_dtype): (Dtype, Dtype),
    params: &[u8],
    grads: &[u8],
) -> Result<()> {
    for (bytes, dtype, which) in [
        (params.len() as u64, params_dtype, "params"),
        (grads.len() as u64, grads_dtype, "grads"),
    ] {
        let expected = dtype.buffer_bytes(len);
        if bytes != expected {
            return Err(match dtype {
                Dtype::F32 => Error::StateMismatch {
                    tensor: which.into(),
                    expected: len,
                    got: bytes / 4,
                },
                _ => Error::FormatSize {
                    buffer: which.into(),
                    format: dtype.name(),
                    len,
                    expected,
                    got: bytes,
                },
            });
        }
    }
    Ok(())
}

fn f32_at(bytes: &[u8], e: usize) -> f32 {
    f32::from_le_bytes(bytes[4 * e..4 * e + 4].try_into().expect("4 bytes"))
}

fn half_at(bytes: &[u8], e: usize) -> u16 {
    u16::from_le_bytes([bytes[2 * e], bytes[2 * e + 1]])
}

fn set_half(bytes: &mut [u8], e: usize, bits: u16) {
    bytes[2 * e..2 * e + 2].copy_from_slice(&bits.to_le_bytes());
}
