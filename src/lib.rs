//! Fused GPU optimizer steps in WGSL on wgpu: SGD (momentum, Nesterov), Adam/AdamW (amsgrad),
//! RMSprop (centered, momentum) and Adagrad, with `torch.optim`'s names, defaults and
//! formulas. A step reads params, grads and state and writes params and state in one
//! dispatch, with no readback and no host wait. Every kernel has a CPU twin
//! ([`CpuOptimizer`]) that performs the same f32 operations, and the tests hold them together.
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
//! adam.set_lr(5e-4)?;          // only the per-step uniform changes
//! let exp_avg = adam.read_state("exp_avg")?;
//! # Ok(()) }
//! ```

mod adagrad;
mod adam;
pub mod bench;
mod context;
mod engine;
mod error;
mod kernel;
mod layout;
mod optimizer;
mod param_set;
mod plan;
pub mod report;
mod rmsprop;
mod roofline;
mod schedule;
mod sgd;
mod unfused;

pub use adagrad::{Adagrad, AdagradScalars};
pub use adam::{Adam, AdamScalars};
pub use context::{enumerate_adapters, AdapterChoice, DispatchLimits, GpuContext};
pub use engine::MAX_PENDING_STEPS;
pub use error::{Error, Result};
pub use kernel::{dispatch_grid, shader_source, UpdateRule, PRELUDE, WORKGROUP_SIZE};
pub use layout::{ParamLayout, TensorSlot, TENSOR_ALIGNMENT};
pub use optimizer::{CpuOptimizer, Optimizer};
pub use param_set::{ForeachOptimizer, ParamGroup, ParamSet};
pub use rmsprop::{RmsProp, RmsPropScalars};
pub use roofline::{Roofline, RooflineScalars};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdScalars};
pub use unfused::{Elementwise, Op, Operand, Program, UnfusedChain};

/// Every shader's full WGSL (the rules with their prelude, the benchmark's roofline and the
/// unfused chain's elementwise kernel), by
/// file name, for validation and tooling.
pub fn shader_sources() -> Vec<(&'static str, String)> {
    vec![
        ("sgd.wgsl", shader_source::<Sgd>()),
        ("adam.wgsl", shader_source::<Adam>()),
        ("rmsprop.wgsl", shader_source::<RmsProp>()),
        ("adagrad.wgsl", shader_source::<Adagrad>()),
        ("roofline.wgsl", shader_source::<Roofline>()),
        ("elementwise.wgsl", unfused::SHADER.to_owned()),
    ]
}

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
