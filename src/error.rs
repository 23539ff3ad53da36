//! One error type for the whole crate: each variant says what went wrong and what to do.

/// Everything fused-optim can fail with. No operation that returns an error has changed
/// params, state or the step count.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found ({detail}). fused-optim needs a Vulkan, Metal or DX12 driver; on \
         headless Linux install Mesa's software Vulkan driver with \
         `apt-get install mesa-vulkan-drivers` and run with WGPU_BACKEND=vulkan"
    )]
    NoAdapter { detail: String },

    #[error("adapter `{adapter}` refused to create a device: {message}")]
    RequestDevice { adapter: String, message: String },

    #[error("invalid hyperparameter `{field}` = {value}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: f64,
        reason: &'static str,
    },

    #[error(
        "the {buffer} buffer lacks the {usage} usage; create it with \
         `wgpu::BufferUsages::{usage}` among its usages"
    )]
    MissingUsage { buffer: String, usage: &'static str },

    #[error("the {buffer} buffer is {bytes} bytes, not a whole number of f32 elements")]
    NotF32Sized { buffer: String, bytes: u64 },

    #[error(
        "{tensor}: params hold {params} elements but grads hold {grads}; both buffers must \
         describe the same tensor"
    )]
    LengthMismatch {
        tensor: String,
        params: u64,
        grads: u64,
    },

    #[error(
        "{tensor}: the buffers hold {got} elements but the optimizer's state was built for \
         {expected}; build the optimizer with the length of the buffers it updates"
    )]
    StateMismatch {
        tensor: String,
        expected: u64,
        got: u64,
    },

    #[error(
        "this optimizer updates {expected} (params, grads) pairs but the step was given {got}; \
         pass them in the order of the lengths it was built with"
    )]
    PairCount { expected: usize, got: usize },

    #[error(
        "the {first} and {second} buffers are the same wgpu::Buffer; a step reads and writes \
         them in one dispatch, so each needs a buffer of its own"
    )]
    AliasedBuffers { first: String, second: String },

    #[error(
        "the {buffer} buffer belongs to another device than the optimizer's; create it on the \
         device of the GpuContext the optimizer was built with"
    )]
    /// A caller buffer was created on another device than the optimizer's.
    ForeignBuffer {
        /// Which buffer: `params`, `grads`, or `params[3]` in a list of pairs.
        buffer: String,
    },

    #[error("this device does not support {what}: {detail}")]
    /// The device lacks a feature or limit that was asked for.
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// What the device lacks, and what to use instead.
        detail: String,
    },

    #[error("an optimizer needs at least one element to update")]
    EmptyParams,

    #[error(
        "{what} needs {bytes} bytes, past this adapter's largest buffer of {limit} bytes \
         (`max_buffer_size`); split the parameters across optimizers"
    )]
    BufferTooLarge {
        what: &'static str,
        bytes: u64,
        limit: u64,
    },

    #[error(
        "the GPU ran out of memory while {operation}; nothing was kept. Free buffers or use a \
         smaller model"
    )]
    OutOfMemory { operation: &'static str },

    #[error(
        "the host could not allocate {bytes} bytes for the CPU twin's state; use a shorter \
         tensor"
    )]
    /// The host refused the CPU twin's state (an absurd length).
    HostOutOfMemory {
        /// Bytes of one state vector.
        bytes: u64,
    },

    #[error("tensor `{name}` is registered twice; tensor names must be unique")]
    DuplicateTensor { name: String },

    #[error("tensor `{name}` has no elements; leave it out of the parameter set")]
    EmptyTensor { name: String },

    #[error("no tensor is named `{name}`; register it before naming it in a group")]
    UnknownTensor { name: String },

    #[error("tensor `{name}` is in parameter groups {first} and {second}; each tensor belongs to exactly one")]
    TensorInTwoGroups {
        name: String,
        first: usize,
        second: usize,
    },

    #[error(
        "tensor `{name}` is in no parameter group; add it to one (e.g. a group with the defaults)"
    )]
    UngroupedTensor { name: String },

    #[error("there is no parameter group {group}")]
    UnknownGroup { group: usize },

    #[error("parameter group {group} names no tensors; drop it or give it some")]
    EmptyGroup { group: usize },

    #[error("this optimizer keeps no state named `{name}`; it keeps: {available}")]
    UnknownState { name: String, available: String },

    #[error("wgpu rejected {operation}: {message}")]
    Gpu {
        operation: &'static str,
        message: String,
    },

    #[error(
        "the GPU device was lost ({reason}); create a new context and re-upload params and \
         state"
    )]
    DeviceLost { reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn check(ok: bool, field: &'static str, value: f64, reason: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            value,
            reason,
        })
    }
}

/// `value >= 0` and finite, as PyTorch requires of lr, weight_decay, momentum, ...
pub(crate) fn non_negative(field: &'static str, value: f64) -> Result<()> {
    check(
        value.is_finite() && value >= 0.0,
        field,
        value,
        "must be a finite number >= 0",
    )
}

/// `value > 0` and finite: an epsilon of 0 divides by zero wherever a gradient is zero.
pub(crate) fn positive(field: &'static str, value: f64) -> Result<()> {
    check(
        value.is_finite() && value > 0.0,
        field,
        value,
        "must be a finite number > 0",
    )
}

/// `0 <= value < 1`, as PyTorch requires of Adam's betas.
pub(crate) fn unit_interval(field: &'static str, value: f64) -> Result<()> {
    check(
        (0.0..1.0).contains(&value),
        field,
        value,
        "must lie in [0, 1)",
    )
}

/// A condition between fields, e.g. nesterov needing momentum.
pub(crate) fn require(
    ok: bool,
    field: &'static str,
    value: f64,
    reason: &'static str,
) -> Result<()> {
    check(ok, field, value, reason)
}
