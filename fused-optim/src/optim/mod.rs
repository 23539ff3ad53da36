//! What users hold: [`Optimizer`] over one caller buffer pair, [`ParamSet`] over a packed
//! [`ParamLayout`] with parameter groups, [`ForeachOptimizer`] over a list of buffer pairs, and
//! [`CpuOptimizer`] and [`CpuParamSet`], the CPU twins of an optimizer and a parameter set on
//! host slices. Generic over the rule, they know none in particular, and they step through
//! the GPU layer's engine.

mod cpu;
mod cpu_param_set;
mod layout;
mod optimizer;
mod param_set;

pub use cpu::CpuOptimizer;
pub use cpu_param_set::CpuParamSet;
pub use layout::{ParamLayout, TensorSlot, TENSOR_ALIGNMENT};
pub use optimizer::Optimizer;
pub use param_set::{ForeachOptimizer, PackedBuffers, ParamGroup, ParamSet};

/// Which tensor of an optimizer a state is read from: by the name its checkpoints use (a
/// parameter set's tensor names; `"0"`, `"1"`, ... for an optimizer's single tensor and a
/// foreach list's, as PyTorch's state dict numbers parameters) or by index (layout order).
/// `read_state(name, "fc.bias")`, `read_state(name, 0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRef<'a> {
    /// By name.
    Name(&'a str),
    /// By index.
    Index(usize),
}

impl<'a> From<&'a str> for TensorRef<'a> {
    fn from(name: &'a str) -> Self {
        TensorRef::Name(name)
    }
}

impl<'a> From<&'a String> for TensorRef<'a> {
    fn from(name: &'a String) -> Self {
        TensorRef::Name(name)
    }
}

impl From<usize> for TensorRef<'_> {
    fn from(index: usize) -> Self {
        TensorRef::Index(index)
    }
}

impl TensorRef<'_> {
    /// The index of the tensor among `count` numbered ones (named by their index).
    pub(crate) fn numbered(self, count: usize) -> crate::Result<usize> {
        let index = match self {
            TensorRef::Index(index) => Some(index),
            TensorRef::Name(name) => name.parse().ok(),
        };
        index
            .filter(|&i| i < count)
            .ok_or_else(|| crate::Error::UnknownTensor {
                name: match self {
                    TensorRef::Name(name) => format!("{name} (this optimizer's are 0..{count})"),
                    TensorRef::Index(i) => format!("#{i} (this optimizer has {count})"),
                },
            })
    }
}

/// The accessors every optimizer kind forwards to its `engine` field (an
/// [`Engine`](crate::gpu::Engine)), written once with their docs: each is one call of the
/// engine, the checkpoint's with the tensors the type's `named_tensors` names.
macro_rules! engine_accessors {
    () => {
        /// Steps recorded so far: PyTorch's `state["step"]`, unless a grad guard skipped some
        /// (`read_state("step")` and [`GradStatus::applied`](crate::GradStatus) count those
        /// the device applied).
        pub fn step_count(&self) -> u64 {
            self.engine.steps
        }

        /// Puts every later step under `guard` (see [`GradGuard`](crate::GradGuard)): loss
        /// unscaling with inf/NaN skipping, clipping by value and by global norm, fused with
        /// the update after one reduction pass over the grads, with no host sync. The first
        /// guard compiles the guarded kernels and allocates its buffers; a later one changes
        /// the settings from the next step on, keeping the counts. A scaler that stays enabled
        /// keeps its scale and growth tracker; switching it off sets the scale to 1 at once,
        /// switching it on starts it at its `init_scale` (as a new `GradScaler`). That write
        /// is refused ([`Error::UnsubmittedStep`](crate::Error::UnsubmittedStep)) while a
        /// recorded step waits to be submitted.
        pub fn with_grad_guard(mut self, guard: crate::GradGuard) -> crate::Result<Self> {
            self.engine.set_guard(guard).map(|()| self)
        }

        /// [`Self::with_grad_guard`] in place; on error nothing changed.
        pub fn set_grad_guard(&mut self, guard: crate::GradGuard) -> crate::Result<()> {
            self.engine.set_guard(guard)
        }

        /// The grad guard's settings, where there is one.
        pub fn grad_guard(&self) -> Option<&crate::GradGuard> {
            self.engine.guard()
        }

        /// The newest grad-guard status the host has, without waiting, and the step (counted
        /// from 1) it followed: each step's status is copied into a small buffer mapped once
        /// its submission completes, so this lags the device by the steps still in flight.
        /// `None` before any guarded step completed (or without a guard).
        pub fn grad_status(&self) -> Option<(u64, crate::GradStatus)> {
            self.engine.newest_guard_status()
        }

        /// The loss scale for the next backward pass as of the newest status the host has
        /// ([`Self::grad_status`]: no wait, lagging the device by the steps in flight), or the
        /// scale the guard started with before any guarded step completed; `None` without a
        /// guard. [`Self::grad_status_buffer`] holds the current one on the device.
        pub fn loss_scale(&self) -> Option<f32> {
            self.engine.loss_scale()
        }

        /// The grad guard's status once every submitted step has run (`None` without a
        /// guard). Waits for the GPU: for tests and logs, not the training loop.
        #[cfg(not(target_arch = "wasm32"))]
        pub fn read_grad_status(&self) -> crate::Result<Option<crate::GradStatus>> {
            pollster::block_on(self.read_grad_status_async())
        }

        /// [`Self::read_grad_status`] as a future, for a browser; natively it waits in place, as
        /// that does.
        pub async fn read_grad_status_async(&self) -> crate::Result<Option<crate::GradStatus>> {
            self.engine.read_guard_status().await
        }

        /// The buffer holding the grad guard's [`GradStatus`](crate::GradStatus) on the
        /// device (`STORAGE | COPY_SRC | COPY_DST`): its first f32 is the loss scale for the
        /// next backward pass, for the caller's shader to multiply the loss by without a
        /// readback. Write nothing to it.
        pub fn grad_status_buffer(&self) -> Option<&wgpu::Buffer> {
            self.engine.guard_status_buffer()
        }

        /// The states this optimizer keeps, by PyTorch name.
        pub fn state_names(&self) -> Vec<&'static str> {
            self.engine.state_names()
        }

        /// Bytes of GPU memory this optimizer allocated: its state buffers (with their block
        /// scales) and master weights, the grad guard's buffers where it has one, the copies
        /// kept from the last checkpoint, and, on adapters without immediates, one uniform
        /// slot per dispatch for the step's values.
        /// Params and grads are the caller's.
        pub fn state_bytes(&self) -> u64 {
            self.engine.state_bytes()
        }

        /// Bytes one step must move: params read and written, grads read (twice with a grad
        /// guard, whose reduction reads them first), and every kept state read and written
        /// (padding between packed tensors included). The denominator of effective bandwidth.
        pub fn bytes_per_step(&self) -> u64 {
            self.engine.bytes_per_step()
        }

        /// The state as a [`Checkpoint`](crate::Checkpoint), named as PyTorch's flattened
        /// optimizer state dict (`state.<tensor>.exp_avg`, `state.<tensor>.step`, ...; see
        /// the type's doc for the tensor names): every slot in its stored format (8-bit or
        /// 4-bit codes with their block scales and code tables), the master, `step`, the grad guard's status, and the
        /// hyperparameters, formats and tensors in the metadata. Params are the caller's: save
        /// them with the model. Waits for the GPU; [`Self::record_checkpoint`] does not.
        #[cfg(not(target_arch = "wasm32"))]
        pub fn checkpoint(&self) -> crate::Result<crate::Checkpoint> {
            pollster::block_on(self.checkpoint_async())
        }

        /// [`Self::checkpoint`] as a future, for a browser (natively it waits in place, as that
        /// does; there [`Checkpoint::to_bytes`](crate::Checkpoint::to_bytes) and
        /// [`Checkpoint::from_bytes`](crate::Checkpoint::from_bytes) stand in for files).
        pub async fn checkpoint_async(&self) -> crate::Result<crate::Checkpoint> {
            self.engine.checkpoint(&self.named_tensors()).await
        }

        /// Records copies of the state into `encoder`, after the steps recorded so far, and
        /// returns the [`PendingCheckpoint`](crate::PendingCheckpoint) that builds the
        /// checkpoint (or writes its file) once the encoder's submission completes: the
        /// training loop waits only for the copies on the GPU, not for the readback or the
        /// disk. The buffers of the newest checkpoint read are kept for the next one (mappable
        /// memory the size of the state, counted by [`Self::state_bytes`]). On error nothing
        /// has been recorded.
        pub fn record_checkpoint(
            &self,
            encoder: &mut wgpu::CommandEncoder,
        ) -> crate::Result<crate::PendingCheckpoint> {
            self.engine
                .record_checkpoint(encoder, &self.named_tensors())
        }

        /// Restores a checkpoint of an optimizer with the same rule and flags, tensors (names,
        /// groups, lengths), formats and grad guard (or none): hyperparameters, every state,
        /// the master, step counts and the guard's status. A mismatch or a corrupt checkpoint
        /// is a typed error naming what is wrong, and changes nothing. Restore before recording
        /// more steps: the state is written ahead of the next submission's commands.
        pub fn restore(&mut self, checkpoint: &crate::Checkpoint) -> crate::Result<()> {
            self.engine.restore(checkpoint, &self.named_tensors())
        }

        /// [`Self::checkpoint`] written to a safetensors file at `path` crash-safely (see
        /// [`Checkpoint::save`](crate::Checkpoint::save)).
        #[cfg(not(target_arch = "wasm32"))]
        pub fn save(&self, path: impl AsRef<std::path::Path>) -> crate::Result<()> {
            self.engine.save(path.as_ref(), &self.named_tensors())
        }

        /// [`Self::restore`] from the safetensors file at `path`.
        #[cfg(not(target_arch = "wasm32"))]
        pub fn load(&mut self, path: impl AsRef<std::path::Path>) -> crate::Result<()> {
            self.engine.load(path.as_ref(), &self.named_tensors())
        }

        /// Dispatches one step records: one per parameter group (or buffer pair) and binding
        /// window, never one per tensor of a packed set, plus one for the 1 to 3 elements
        /// past the last whole vec4 of each group or pair whose length is not a multiple of 4.
        pub fn dispatches_per_step(&self) -> usize {
            self.engine.dispatches()
        }
    };
}
pub(crate) use engine_accessors;
