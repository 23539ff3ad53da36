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
pub use context::{
    enumerate_adapters, AdapterChoice, DispatchLimits, GpuContext, MAX_STEP_VALUES_BYTES,
};
pub use error::{Error, Result};
pub use kernel::{
    dispatch_grid, shader_source, Lanes, StepValues, UpdateRule, PRELUDE, WORKGROUP_SIZE,
};
pub use layout::{ParamLayout, TensorSlot, TENSOR_ALIGNMENT};
pub use optimizer::{CpuOptimizer, Optimizer};
pub use param_set::{ForeachOptimizer, ParamGroup, ParamSet};
pub use rmsprop::{RmsProp, RmsPropScalars};
pub use roofline::{Roofline, RooflineScalars};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdScalars};
pub use unfused::{Elementwise, Op, Operand, Program, UnfusedChain};

/// Every shader's full WGSL (the rules with their prelude, the benchmark's roofline and the
/// unfused chain's elementwise kernel) in each of the forms the host builds: vector and scalar
/// lanes, values as immediates or in a uniform. Named `file [lanes, values]`, for validation
/// and tooling.
pub fn shader_sources() -> Vec<(String, String)> {
    let mut sources = Vec::new();
    for lanes in [Lanes::Vector, Lanes::Scalar] {
        for values in [StepValues::Immediates, StepValues::UniformCopy] {
            let form = format!("[{lanes:?}, {values:?}]");
            for (file, source) in [
                ("sgd.wgsl", shader_source::<Sgd>(lanes, values)),
                ("adam.wgsl", shader_source::<Adam>(lanes, values)),
                ("rmsprop.wgsl", shader_source::<RmsProp>(lanes, values)),
                ("adagrad.wgsl", shader_source::<Adagrad>(lanes, values)),
                ("roofline.wgsl", shader_source::<Roofline>(lanes, values)),
                (
                    "elementwise.wgsl",
                    kernel::assemble(unfused::SHADER, lanes, values),
                ),
            ] {
                sources.push((format!("{file} {form}"), source));
            }
        }
    }
    sources
}

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
