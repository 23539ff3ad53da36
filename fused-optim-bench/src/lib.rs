//! The fused-optim benchmark: what `fused-optim bench` measures (each registered rule's fused
//! step beside its roofline, unfused chain, CPU twin, the copy bandwidth and hand-written
//! kernels) and the report writers (table, JSON, CSV, SVG). Unpublished: it carries the heavy
//! dependencies the library must not.

pub mod measure;
pub mod report;
