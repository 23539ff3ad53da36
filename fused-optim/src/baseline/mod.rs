//! The benchmark's baselines, run through the same engine as the optimizers: the roofline
//! rule (a rule's bytes moved with no arithmetic: the floor) and the unfused chain (a rule's
//! program run one elementwise kernel per operation, as a framework without fusion does).
//! They know the optimizers' layers; nothing there knows them. Behind the `baselines` feature.

mod roofline;
mod unfused;

pub use roofline::{Roofline, RooflineScalars};
pub use unfused::UnfusedChain;

use crate::gpu::shader_forms;

/// The baselines' full WGSL in each form the host builds, named like
/// [`shader_sources`](crate::tooling::shader_sources)'s.
pub fn shader_sources() -> Vec<(String, String)> {
    let mut sources = shader_forms::<Roofline>("roofline.wgsl");
    sources.extend(shader_forms::<unfused::ElementwiseOp>("elementwise.wgsl"));
    sources
}
