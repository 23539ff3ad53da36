//! Fused GPU optimizer steps in WGSL on wgpu: SGD (momentum, Nesterov), Adam/AdamW (amsgrad),
//! RMSprop (centered, momentum) and Adagrad, with `torch.optim`'s names, defaults and
//! formulas. A step reads params, grads and state and writes params and state in one
//! dispatch, with no readback and no host wait. Every kernel has a CPU twin
//! ([`CpuOptimizer`]) that performs the same f32 operations, and the tests hold them together.
//!
//! Params and grads may be bf16 or f16, with an f32 master, a 16-bit remainder or an 8-bit
//! correction, and state f32, bf16, or 8-bit or 4-bit block-wise, per parameter group
//! ([`Precision`]); the rule's arithmetic is f32 between a load and a store the shared prelude
//! does for every format.
//!
//! The modules are the layers, each depending only on those before it:
//! - [`format`](mod@format): storage formats, their bytes and the CPU twins of their codecs; no GPU.
//! - [`checkpoint`]: checkpoints as named host tensors, their safetensors file; no GPU.
//! - [`guard`]: the grad guard's settings, status and CPU twin; no GPU.
//! - `rule`: what an update rule is (its declaration, trait, hyperparameters, twin loop,
//!   unfused program); no GPU.
//! - `rules`: the optimizers, one file and one shader each, and the registry
//!   ([`tooling::visit_rules`]); their configuration types re-exported here.
//! - `gpu`: the host layer (context, kernels, plan, engine); knows no particular rule.
//! - `optim`: what users hold ([`Optimizer`], [`ParamSet`], [`ForeachOptimizer`],
//!   [`CpuOptimizer`], [`CpuParamSet`]).
//! - `baseline` (feature `baselines`): the benchmark's roofline and unfused chain.
//! - [`tooling`]: what tools read (kernel sources and shapes, the registry, the rule schema).
//!
//! The root exports what a trainer needs; [`tooling`] what tools need (kernel sources and
//! shapes, the rule registry, per-step scalars).
//!
//! ```no_run
//! use fused_optim::{Adam, GpuContext, Optimizer};
//!
//! # fn main() -> fused_optim::Result<()> {
//! let gpu = GpuContext::new()?; // or GpuContext::from_device(device, queue)
//! let params = gpu.upload("params", &[0.5; 1000])?;
//! let grads = gpu.upload("grads", &[0.1; 1000])?;
//! let mut adam = Optimizer::new(&gpu, Adam { lr: 1e-3, ..Adam::default() }, 1000)?;
//! adam.step(&params, &grads)?; // or record_step(&mut encoder, ...) inside your own encoder
//! adam.set_lr(5e-4)?;          // only the per-step values change
//! let exp_avg = adam.read_state("exp_avg", 0)?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "baselines")]
pub mod baseline;
pub mod checkpoint;
mod error;
pub mod format;
mod gpu;
pub mod guard;
mod optim;
mod rule;
mod rules;
pub mod tooling;

/// The wgpu this library is built on, for naming its buffers, devices and encoders without
/// depending on a second copy.
pub use wgpu;

pub use checkpoint::{Checkpoint, HostTensor, TensorDtype, TensorPlace};
pub use error::{Error, Result};
pub use format::{Dtype, Master, Precision, Rounding, StateFormat};
#[cfg(not(target_arch = "wasm32"))]
pub use gpu::enumerate_adapters;
pub use gpu::{AdapterChoice, DispatchLimits, GpuContext, PendingCheckpoint, StepValues};
pub use guard::{
    ClipGradNorm, CpuGuard, GradGuard, GradPartial, GradScaler, GradStatus, GradStep, NormType,
};
pub use optim::{
    CpuOptimizer, CpuParamSet, ForeachOptimizer, Optimizer, PackedBuffers, ParamGroup, ParamLayout,
    ParamSet, TensorRef, TensorSlot, TENSOR_ALIGNMENT,
};
pub use rule::{Hyperparameter, LrSchedule, UpdateRule};
pub use rules::optimizers::*;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
