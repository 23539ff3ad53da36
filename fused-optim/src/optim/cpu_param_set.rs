//! [`CpuParamSet`]: the CPU twin of [`ParamSet`](super::ParamSet), the same packed layout,
//! groups and grad guard on host slices, each group stepped by a [`CpuOptimizer`].

use super::cpu::{check_buffer_sizes, CpuOptimizer};
use super::layout::{ParamLayout, TensorSlot};
use super::param_set::ParamGroup;
use super::TensorRef;
use crate::error::{Error, Result};
use crate::format::Dtype;
use crate::gpu::{target_dtypes, Span};
use crate::guard::{CpuGuard, GradGuard, GradStatus, GradStep};
use crate::rule::{find_state, state_names, try_set_lr, StateRef, UpdateRule};

/// The CPU twin of [`ParamSet`](crate::ParamSet): named tensors packed into one params and
/// one grads buffer by the same [`ParamLayout`], in the same [`ParamGroup`]s, stepped on host
/// slices of the packed buffers, under one grad guard over every tensor.
///
/// Each group is a [`CpuOptimizer`] over the group's run of the packed buffers
/// ([`ParamLayout::group_range`], the padding between its tensors included), as the set's
/// kernels step it: stochastic rounding and block codes draw their random points from each
/// element's place in its group's run, as on the device. A guard checks every group's run
/// with one [`CpuGuard`] (one global norm, one decision to skip), and every group takes the
/// [`GradStep`] it returns.
#[derive(Clone, Debug)]
pub struct CpuParamSet<R: UpdateRule> {
    layout: ParamLayout,
    /// One twin per group, over its run of the packed buffers.
    groups: Vec<CpuOptimizer<R>>,
    /// The packed params' and grads' formats, which every group shares.
    dtypes: (Dtype, Dtype),
    /// The grad guard's twin, where steps are guarded.
    guard: Option<CpuGuard>,
}

impl<R: UpdateRule> CpuParamSet<R> {
    /// Packs `tensors` (name, element count) into `groups` and allocates the state on the
    /// host: the twin of [`ParamSet::new`](crate::ParamSet::new), refusing what it refuses
    /// of the layout, the rules and the formats.
    pub fn new<T: AsRef<str>>(tensors: &[(T, usize)], groups: Vec<ParamGroup<R>>) -> Result<Self> {
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|group| group.tensors.iter().map(String::as_str).collect())
            .collect();
        let layout = ParamLayout::new(tensors, &names)?;
        let spans: Vec<Span> = (0..layout.group_count())
            .map(|group| {
                let run = layout.group_range(group);
                Span {
                    target: 0,
                    group,
                    start: run.start,
                    end: run.end,
                    first: 0,
                }
            })
            .collect();
        let precisions: Vec<_> = groups.iter().map(|g| g.precision.clone()).collect();
        // Each group's twin validates its rule and precision, which ParamSet checks first.
        let groups = groups
            .into_iter()
            .zip(&spans)
            .map(|(group, span)| {
                let len = (span.end - span.start) as usize;
                CpuOptimizer::with_precision(group.rule, group.precision, len)
            })
            .collect::<Result<_>>()?;
        // The packed buffers' formats, which the groups must agree on: ParamSet's check,
        // over one span per group of its one buffer pair.
        let dtypes = target_dtypes(1, &spans, &precisions)?[0];
        Ok(Self {
            layout,
            groups,
            dtypes,
            guard: None,
        })
    }

    /// Puts every later step under `guard`: the twin of
    /// [`ParamSet::with_grad_guard`](crate::ParamSet::with_grad_guard). Each step then checks
    /// the grads of every tensor with one [`CpuGuard`] first, and every group takes them as
    /// it says.
    pub fn with_grad_guard(mut self, guard: GradGuard) -> Result<Self> {
        self.set_grad_guard(guard)?;
        Ok(self)
    }

    /// [`Self::with_grad_guard`] in place, keeping the scaler's state as the GPU set does; on
    /// error nothing changed.
    pub fn set_grad_guard(&mut self, guard: GradGuard) -> Result<()> {
        let applied = self.step_count();
        CpuGuard::install(&mut self.guard, guard, applied)
    }

    /// The grad guard's status after the last step (`None` without a guard).
    pub fn grad_status(&self) -> Option<GradStatus> {
        self.guard.as_ref().map(CpuGuard::status)
    }

    /// The loss scale for the next backward pass (`None` without a guard).
    pub fn loss_scale(&self) -> Option<f32> {
        self.grad_status().map(|status| status.scale)
    }

    /// Where each tensor lives in the packed buffers: the layout a [`ParamSet`](crate::ParamSet)
    /// of the same tensors and groups has.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Each group's twin, in the order the groups were given: its rule, precision, state
    /// and master over the group's run of the packed buffers (element `k` of group `g`'s is
    /// the packed element `layout().group_range(g).start + k`).
    pub fn group_twins(&self) -> &[CpuOptimizer<R>] {
        &self.groups
    }

    /// Steps applied so far (PyTorch's `state["step"]`); a step the guard skipped is not one.
    pub fn step_count(&self) -> u64 {
        self.groups[0].step_count()
    }

    /// The states some group keeps, by PyTorch name.
    pub fn state_names(&self) -> Vec<&'static str> {
        let rules: Vec<R> = self.groups.iter().map(|g| g.rule().clone()).collect();
        state_names(&rules)
    }

    /// Sets every group's learning rate from the next step on; a rejected value changes none.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        for twin in &self.groups {
            try_set_lr(&mut twin.rule().clone(), lr)?;
        }
        self.groups.iter_mut().try_for_each(|twin| twin.set_lr(lr))
    }

    /// Sets one group's learning rate from the next step on (what a scheduler does per group).
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.groups
            .get_mut(group)
            .ok_or(Error::UnknownGroup { group })?
            .set_lr(lr)
    }

    /// One tensor's state (by name, or by index in layout order) by PyTorch name, decoded to
    /// f32; `step` reads as one element: the twin of
    /// [`ParamSet::read_state`](crate::ParamSet::read_state). Fails for a state the tensor's
    /// group does not keep.
    pub fn read_state<'a>(&self, name: &str, tensor: impl Into<TensorRef<'a>>) -> Result<Vec<f32>> {
        let slot = self.layout.find(tensor.into())?;
        let twin = &self.groups[slot.group];
        let values = twin.read_state(name, 0)?;
        Ok(match find_state(twin.rule(), name)? {
            StateRef::Slot(_) => values[self.run_range(slot)].to_vec(),
            StateRef::Host(_) | StateRef::Step => values,
        })
    }

    /// One step over the packed f32 `params` and `grads` (each `layout().len()` elements).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        self.step_bytes(
            bytemuck::cast_slice_mut(params),
            bytemuck::cast_slice(grads),
        )
    }

    /// One step over the packed params and grads given as the bytes of buffers in the
    /// groups' formats (what [`Dtype::encode`](crate::Dtype::encode) makes of `layout().len()`
    /// elements): each group's run stepped by its [`CpuOptimizer`]. Under a grad guard the
    /// grads of every group's run are checked first, together, and a skipped step changes
    /// nothing but the guard's status. On error nothing changed.
    pub fn step_bytes(&mut self, params: &mut [u8], grads: &[u8]) -> Result<()> {
        let len = self.layout.len();
        check_buffer_sizes(len, self.dtypes, params, grads)?;
        let step = match &mut self.guard {
            Some(twin) => {
                let decoded = self.dtypes.1.decode(grads, len as usize);
                let runs: Vec<&[f32]> = (0..self.groups.len())
                    .map(|group| {
                        let run = self.layout.group_range(group);
                        &decoded[run.start as usize..run.end as usize]
                    })
                    .collect();
                twin.check(&runs)
            }
            None => GradStep::PLAIN,
        };
        let (params_bytes, grads_bytes) = (
            self.dtypes.0.element_bytes() as usize,
            self.dtypes.1.element_bytes() as usize,
        );
        for (group, twin) in self.groups.iter_mut().enumerate() {
            let run = self.layout.group_range(group);
            let (start, end) = (run.start as usize, run.end as usize);
            // Sizes are checked above: no group's step fails.
            twin.step_guarded(
                &mut params[start * params_bytes..end * params_bytes],
                &grads[start * grads_bytes..end * grads_bytes],
                &step,
            )?;
        }
        Ok(())
    }

    /// The elements of `slot`'s tensor within its group's run.
    fn run_range(&self, slot: &TensorSlot) -> std::ops::Range<usize> {
        let start = (slot.offset - self.layout.group_range(slot.group).start) as usize;
        start..start + slot.len as usize
    }
}
