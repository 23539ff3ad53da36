//! The GPU host layer: the device context, kernels built from a rule's WGSL and the shared
//! prelude, the plan of windows and dispatches, and the engine that records a step. The
//! engine runs a [`StepKernel`], which every [`UpdateRule`](crate::UpdateRule) is; it never
//! knows a particular rule (of the registry, the context reads only the largest scalars'
//! size, to check the adapter's limits).

mod callbacks;
mod context;
mod engine;
mod glue;
mod guard;
mod kernel;
mod plan;
mod step_kernel;
mod values;

#[cfg(not(target_arch = "wasm32"))]
pub use context::enumerate_adapters;
pub use context::{AdapterChoice, DispatchLimits, GpuContext, MAX_STEP_VALUES_BYTES};
#[cfg(feature = "baselines")]
pub(crate) use engine::state_buffer;
pub use engine::PendingCheckpoint;
pub(crate) use engine::{target_dtypes, Engine, NamedTensor, Reduction};
pub(crate) use glue::Role;
pub use kernel::{
    dispatch_grid, shader_forms, shader_source, StepValues, CODEC, DUMP_KERNELS, PRELUDE,
    WORKGROUP_SIZE,
};
pub use plan::Lanes;
pub(crate) use plan::Span;
pub use step_kernel::StepKernel;
