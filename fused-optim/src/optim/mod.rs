//! What users hold: [`Optimizer`] over one caller buffer pair, [`ParamSet`] over a packed
//! [`ParamLayout`] with parameter groups, [`ForeachOptimizer`] over a list of buffer pairs, and
//! [`CpuOptimizer`], the CPU twin on host slices. Generic over the rule, they know none in
//! particular, and they step through the GPU layer's engine.

mod cpu;
mod layout;
mod optimizer;
mod param_set;

pub use cpu::CpuOptimizer;
pub use layout::{ParamLayout, TensorSlot, TENSOR_ALIGNMENT};
pub use optimizer::Optimizer;
pub use param_set::{ForeachOptimizer, ParamGroup, ParamSet};

/// The accessors every optimizer kind forwards to its `engine` field, written once.
macro_rules! engine_accessors {
    () => {
        /// Steps taken so far (PyTorch's `state["step"]`).
        pub fn step_count(&self) -> u64 {
            self.engine.steps
        }

        /// The states this optimizer keeps, by PyTorch name.
        pub fn state_names(&self) -> Vec<&'static str> {
            crate::rule::state_names(&self.engine.groups)
        }

        /// Bytes of GPU memory this optimizer allocated: its state buffers, a 16-byte
        /// placeholder for state slots no group keeps, and, on adapters without immediates,
        /// one uniform slot per dispatch for the step's values. Params and grads are the
        /// caller's.
        pub fn state_bytes(&self) -> u64 {
            self.engine.state_bytes()
        }

        /// Bytes one step must move: params read and written, grads read, and every kept state
        /// read and written (padding between packed tensors included). The denominator of
        /// effective bandwidth.
        pub fn bytes_per_step(&self) -> u64 {
            self.engine.bytes_per_step()
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
