//! One error type for the whole crate: each variant says what went wrong and what to do.

/// Everything fused-optim can fail with. No operation that returns an error has changed
/// params, state or the step count. Non-exhaustive: a later version may add variants, so a
/// `match` needs a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "no GPU adapter found ({detail}). fused-optim needs a Vulkan, Metal or DX12 driver; on \
         headless Linux install Mesa's software Vulkan driver with \
         `apt-get install mesa-vulkan-drivers` and run with WGPU_BACKEND=vulkan"
    )]
    /// No adapter matched the requested backends or name.
    NoAdapter {
        /// Why: wgpu's reason, or the name asked for and the adapters found.
        detail: String,
    },

    #[error("adapter `{adapter}` refused to create a device: {message}")]
    /// The adapter refused to create a device.
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },

    #[error("invalid hyperparameter `{field}` = {value}: {reason}")]
    /// A hyperparameter or setting outside its valid range.
    InvalidConfig {
        /// The hyperparameter's name.
        field: &'static str,
        /// The value given.
        value: f64,
        /// What a valid value is.
        reason: &'static str,
    },

    #[error(
        "the {buffer} buffer lacks the {usage} usage; create it with \
         `wgpu::BufferUsages::{usage}` among its usages"
    )]
    /// A caller buffer lacks a usage the step needs.
    MissingUsage {
        /// Which buffer: `params`, `grads`, or `params[3]` in a list of pairs.
        buffer: String,
        /// The missing `wgpu::BufferUsages` flag, e.g. `STORAGE`.
        usage: &'static str,
    },

    #[error("the {buffer} buffer is {bytes} bytes, not a whole number of f32 elements")]
    /// A buffer whose size is not a multiple of 4 bytes.
    NotF32Sized {
        /// Which buffer.
        buffer: String,
        /// Its size in bytes.
        bytes: u64,
    },

    #[error(
        "{tensor}: params hold {params} elements but grads hold {grads}; both buffers must \
         describe the same tensor"
    )]
    /// A params buffer and its grads buffer differ in length.
    LengthMismatch {
        /// Which tensor, by its params buffer's name.
        tensor: String,
        /// Elements the params buffer holds.
        params: u64,
        /// Elements the grads buffer holds.
        grads: u64,
    },

    #[error(
        "{tensor}: the buffers hold {got} elements but the optimizer's state was built for \
         {expected}; build the optimizer with the length of the buffers it updates"
    )]
    /// Buffers of another length than the optimizer's state was built for.
    StateMismatch {
        /// Which tensor or buffer.
        tensor: String,
        /// Elements the state was built for.
        expected: u64,
        /// Elements the buffers hold.
        got: u64,
    },

    #[error(
        "this optimizer updates {expected} (params, grads) pairs but the step was given {got}; \
         pass them in the order of the lengths it was built with"
    )]
    /// A step given another number of (params, grads) pairs than the optimizer updates.
    PairCount {
        /// Pairs the optimizer was built for.
        expected: usize,
        /// Pairs the step was given.
        got: usize,
    },

    #[error(
        "the {first} and {second} buffers are the same wgpu::Buffer; a step reads and writes \
         them in one dispatch, so each needs a buffer of its own"
    )]
    /// One wgpu::Buffer passed as two of a step's buffers.
    AliasedBuffers {
        /// The first role it was passed in, e.g. `params`.
        first: String,
        /// The second role it was passed in, e.g. `grads`.
        second: String,
    },

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

    /// A checkpoint that cannot be read: truncated, corrupted, of a newer format version, or
    /// with a tensor of the wrong type, shape or values.
    #[error("corrupt checkpoint: {reason}")]
    CorruptCheckpoint {
        /// What is wrong.
        reason: String,
    },

    /// A checkpoint that is sound but not of this optimizer: another rule, layout or storage
    /// format, or state this optimizer does not keep.
    #[error("the checkpoint does not match this optimizer: {reason}")]
    CheckpointMismatch {
        /// What differs, and what to do.
        reason: String,
    },

    /// A step recorded into a caller's encoder has not been submitted, and what was asked
    /// must follow it on the GPU's timeline: a checkpoint would hold the state before that
    /// step while counting it, a restore or a loss-scale reset would land ahead of it.
    #[error(
        "step {step} is recorded into an encoder that has not been submitted: submit it before \
         {operation}"
    )]
    UnsubmittedStep {
        /// The step, counted from 1.
        step: u64,
        /// What was asked.
        operation: &'static str,
    },

    /// A checkpoint's copies were recorded into an encoder that has not been submitted, and
    /// what was asked would run ahead of them: a step or a restore would change the state
    /// they are to copy, under the step count they were recorded with.
    #[error(
        "a checkpoint recorded after step {after_step} is in an encoder that has not been \
         submitted: submit it before {operation}"
    )]
    UnsubmittedCheckpoint {
        /// The steps taken when it was recorded.
        after_step: u64,
        /// What was asked.
        operation: &'static str,
    },

    /// A step was recorded into an encoder dropped without being submitted: it never ran,
    /// yet the optimizer counted it, so its state and its step count disagree.
    #[error(
        "step {step} was recorded into an encoder dropped without being submitted: it never \
         ran, yet the optimizer counted it; restore a checkpoint (or build the optimizer \
         anew) to go on"
    )]
    DroppedStep {
        /// The step, counted from 1.
        step: u64,
    },

    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },

    /// A grad guard setting `torch.amp.GradScaler` or the clipping functions would reject.
    #[error("invalid grad guard: {reason}")]
    InvalidGuard {
        /// What is wrong and what to use instead.
        reason: String,
    },

    /// A storage-format combination that means nothing, or a per-slot format for a slot the
    /// rule does not have.
    #[error("invalid precision: {reason}")]
    InvalidPrecision {
        /// What is wrong and what to use instead.
        reason: String,
    },

    #[error(
        "the {buffer} buffer is {got} bytes, but {len} elements stored as {format} take \
         {expected} bytes (16-bit formats pack two elements per u32 word: ceil(len / 2) * 4 \
         bytes); pass a buffer in the format its group declares, of that size"
    )]
    /// A caller buffer whose size does not fit the declared format and length.
    FormatSize {
        /// Which buffer: `params`, `grads`, or `params[3]` in a list of pairs.
        buffer: String,
        /// The format its group declares (`bf16`, `f16`: [`Dtype::name`](crate::Dtype::name)).
        format: &'static str,
        /// The elements it must hold.
        len: u64,
        /// The bytes those take.
        expected: u64,
        /// Its size in bytes.
        got: u64,
    },

    #[error(
        "parameter groups {first} and {second} share the {buffer} buffer but declare different \
         formats for it ({first_format} and {second_format}); a buffer has one format"
    )]
    /// Two parameter groups of one packed buffer declare different formats for it.
    FormatMismatch {
        /// `params` or `grads`.
        buffer: &'static str,
        /// The first group.
        first: usize,
        /// Its format (`f32`, `bf16`, `f16`).
        first_format: &'static str,
        /// The group that disagrees.
        second: usize,
        /// Its format.
        second_format: &'static str,
    },

    #[error("an optimizer needs at least one element to update")]
    /// An optimizer or layout asked to update no elements.
    EmptyParams,

    #[error(
        "{what} needs {bytes} bytes, past this adapter's largest buffer of {limit} bytes \
         (`max_buffer_size`); split the parameters across optimizers"
    )]
    /// A buffer larger than the adapter allows.
    BufferTooLarge {
        /// What the buffer is for.
        what: &'static str,
        /// Bytes it would need.
        bytes: u64,
        /// The most bytes the adapter allows for it.
        limit: u64,
    },

    #[error(
        "the GPU ran out of memory while {operation}; nothing was kept. Free buffers or use a \
         smaller model"
    )]
    /// The GPU ran out of memory.
    OutOfMemory {
        /// What was being done, e.g. `allocating a buffer`.
        operation: &'static str,
    },

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
    /// Two tensors registered under one name.
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },

    #[error("tensor `{name}` has no elements; leave it out of the parameter set")]
    /// A tensor registered with no elements.
    EmptyTensor {
        /// The tensor's name.
        name: String,
    },

    #[error("no tensor is named `{name}`; register it before naming it in a group")]
    /// A name no registered tensor has.
    UnknownTensor {
        /// The name asked for.
        name: String,
    },

    #[error(
        "a param_groups entry names parameter {index}, but {count} parameter names were given; \
         pass every parameter's name in PyTorch's order (model.named_parameters())"
    )]
    /// A PyTorch `param_groups` entry naming a parameter index past the names given.
    ParamIndex {
        /// The index named.
        index: u64,
        /// How many names were given.
        count: usize,
    },

    #[error("tensor `{name}` is in parameter groups {first} and {second}; each tensor belongs to exactly one")]
    /// A tensor named by two parameter groups.
    TensorInTwoGroups {
        /// The tensor's name.
        name: String,
        /// Index of the first group naming it.
        first: usize,
        /// Index of the second group naming it.
        second: usize,
    },

    #[error(
        "tensor `{name}` is in no parameter group; add it to one (e.g. a group with the defaults)"
    )]
    /// A registered tensor no parameter group names.
    UngroupedTensor {
        /// The tensor's name.
        name: String,
    },

    #[error(
        "invalid shard {start}..{end} of a layout of {len} elements: {reason}; \
         ParamLayout::shards gives valid ones"
    )]
    /// A shard range that is empty, past the layout, or not on a shard boundary.
    InvalidShard {
        /// The range's first element.
        start: u64,
        /// The range's end.
        end: u64,
        /// Elements of the packed layout.
        len: u64,
        /// What is wrong.
        reason: String,
    },

    #[error("{operation} is not available on a shard ({start}..{end}): {instead}")]
    /// An operation a shard cannot do alone: it would see only its part where the result
    /// depends on every shard's.
    ShardUnsupported {
        /// What was asked.
        operation: &'static str,
        /// The shard's range.
        start: u64,
        /// The shard's end.
        end: u64,
        /// What to do instead.
        instead: &'static str,
    },

    #[error("tensor `{name}` lies partly outside this shard ({start}..{end})")]
    /// A per-tensor read of a tensor the shard holds only part of.
    TensorOutsideShard {
        /// The tensor's name.
        name: String,
        /// The shard's range.
        start: u64,
        /// The shard's end.
        end: u64,
    },

    #[error("there is no parameter group {group}")]
    /// A parameter group index past the last group.
    UnknownGroup {
        /// The index asked for.
        group: usize,
    },

    #[error("parameter group {group} names no tensors; drop it or give it some")]
    /// A parameter group that names no tensors.
    EmptyGroup {
        /// The group's index.
        group: usize,
    },

    #[error("{rule} has no hyperparameter named `{name}`; it has: {available} (PyTorch's names)")]
    /// A hyperparameter name the rule does not have.
    UnknownHyperparameter {
        /// The name asked for.
        name: String,
        /// The rule's name.
        rule: &'static str,
        /// The names it has, comma separated.
        available: String,
    },

    #[error("hyperparameter `{name}` takes {expected}, not {got}")]
    /// A hyperparameter value of the wrong kind (a flag for a number, ...).
    HyperparameterKind {
        /// The hyperparameter.
        name: String,
        /// The kind it takes.
        expected: &'static str,
        /// The kind given.
        got: &'static str,
    },

    #[error("this optimizer keeps no state named `{name}`; it keeps: {available}")]
    /// A state name the optimizer does not keep.
    UnknownState {
        /// The name asked for.
        name: String,
        /// The states it keeps, comma separated, or where to look instead.
        available: String,
    },

    #[error("wgpu rejected {operation}: {message}")]
    /// A validation or internal error wgpu reported.
    Gpu {
        /// What was being done, e.g. `uploading a buffer`.
        operation: &'static str,
        /// wgpu's error message.
        message: String,
    },

    #[error(
        "the GPU device was lost ({reason}); create a new context and re-upload params and \
         state"
    )]
    /// The GPU device was lost.
    DeviceLost {
        /// Why, as wgpu reported it.
        reason: String,
    },
}

/// `std::result::Result` with fused-optim's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
