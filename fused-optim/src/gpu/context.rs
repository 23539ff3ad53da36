//! The GPU context shared by every optimizer: device setup, the pipeline cache, error scopes,
//! and upload/readback helpers. Knows nothing of any single update rule.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::kernel::{Kernel, KernelKey, StepValues, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::rules::LARGEST_SCALARS_BYTES;

/// A wgpu device and queue, plus what fused-optim caches on them. Cheap to clone.
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
    dispatch: DispatchLimits,
    /// How kernels get their per-dispatch values; `None` picks per kernel (see
    /// [`GpuContext::step_values_for`]).
    step_values: Option<StepValues>,
}

/// How big one dispatch may be: optimizers cut their buffers into windows of at most
/// `window_elements` and fold grids past `workgroups_per_dimension`. The defaults come from the
/// adapter; [`GpuContext::with_dispatch_limits`] lowers them, e.g. to test window edges on any
/// adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Elements one window binds: a multiple of 4, so windows never split a vec4.
    pub window_elements: u64,
    /// The most workgroups one dispatch may have in one grid dimension; larger grids are
    /// folded into two dimensions.
    pub workgroups_per_dimension: u32,
}

/// The most bytes of per-dispatch values any rule's kernel takes: the header and the largest
/// rule's scalars (the registry's count).
pub const MAX_STEP_VALUES_BYTES: u64 = HEADER_BYTES as u64 + LARGEST_SCALARS_BYTES;

/// Elements a u32 index reaches with room for the overshoot of a folded grid.
const INDEX_LIMIT_ELEMENTS: u64 = 1 << 30;

/// The adapter's own dispatch limits: the largest window a storage binding (and a buffer, and a
/// u32 index) holds, rounded down to whole vec4s.
fn adapter_dispatch_limits(limits: &wgpu::Limits) -> DispatchLimits {
    let binding_bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    DispatchLimits {
        window_elements: (binding_bytes / 16 * 4).min(INDEX_LIMIT_ELEMENTS),
        workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
    }
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// On the web, where popping an error scope is a promise: the scopes of earlier calls
    /// whose errors are still to be learnt (see [`GpuContext::settle`]).
    #[cfg(target_arch = "wasm32")]
    unsettled: Mutex<Vec<Unsettled>>,
}

/// The error scopes one call popped, as a future of the first error they caught.
#[cfg(target_arch = "wasm32")]
struct Unsettled {
    operation: &'static str,
    caught: std::pin::Pin<Box<dyn std::future::Future<Output = Option<wgpu::Error>>>>,
}

/// Which adapter to open: a backend set and an optional case-insensitive substring of its name.
#[derive(Clone, Debug)]
pub struct AdapterChoice {
    /// The backends to search.
    pub backends: wgpu::Backends,
    /// A case-insensitive substring of the adapter's name; `None` takes wgpu's preferred one.
    pub name: Option<String>,
}

impl AdapterChoice {
    /// `WGPU_BACKEND` (e.g. `vulkan`, `metal,dx12`) and `WGPU_ADAPTER_NAME`, as wgpu's own tools read them.
    pub fn from_env() -> Self {
        Self {
            backends: wgpu::Backends::from_env().unwrap_or_default(),
            name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// The adapters of one backend set, found once per process through one wgpu instance.
///
/// Every device fused-optim opens on that backend set comes from this instance, so all share
/// its resource registry: a buffer of another such device is a validation error wgpu reports
/// (and fused-optim turns into [`Error::ForeignBuffer`]), where a buffer of another
/// instance's registry would make wgpu-core panic. The adapters are found when the instance is
/// made and never looked for again: on GL, looking makes the instance's one EGL context current
/// outside the lock its devices use, which fails while another thread is using a device.
#[derive(Clone)]
struct Adapters {
    backends: wgpu::Backends,
    all: Vec<wgpu::Adapter>,
    /// wgpu's pick for the power preference in the environment, or why there is none.
    preferred: std::result::Result<wgpu::Adapter, String>,
}

/// The adapters found so far, one entry per backend set.
static FOUND: Mutex<Vec<Adapters>> = Mutex::new(Vec::new());

fn found() -> std::sync::MutexGuard<'static, Vec<Adapters>> {
    FOUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The adapters of `backends`: natively found once per process (see [`Adapters`]); in a
/// browser found anew for every device, since WebGPU lets an adapter make only one.
async fn adapters(backends: wgpu::Backends) -> Adapters {
    if cfg!(target_arch = "wasm32") {
        return find_adapters(backends).await;
    }
    if let Some(adapters) = found().iter().find(|a| a.backends == backends) {
        return adapters.clone();
    }
    let made = find_adapters(backends).await;
    let mut found = found();
    // Another caller may have found them meanwhile: keep the first instance, so that every
    // device of these backends comes from one.
    if let Some(adapters) = found.iter().find(|a| a.backends == backends) {
        return adapters.clone();
    }
    found.push(made.clone());
    made
}

/// The adapters of `backends`, through a new wgpu instance.
async fn find_adapters(backends: wgpu::Backends) -> Adapters {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    // Where the driver reports a memory budget, creating past it fails with an out-of-memory
    // error (caught by our scopes) instead of overcommitting or losing the device.
    desc.memory_budget_thresholds.for_resource_creation = Some(95);
    let instance = wgpu::Instance::new(desc);
    let all = instance.enumerate_adapters(backends).await;
    let preferred = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string());
    Adapters {
        backends,
        all,
        preferred,
    }
}

/// Whether wgpu's `error` (from creating a bind group) says a resource belongs to another
/// device. wgpu-core's errors forward to one another transparently, so the mismatch is a
/// variant of the bind-group error rather than a link of the source chain. (wgpu-core's
/// errors are native-only; the browser's are messages.)
#[cfg(not(target_arch = "wasm32"))]
fn is_device_mismatch(error: &wgpu::Error) -> bool {
    use wgpu::wgc::{binding_model::CreateBindGroupError, device::DeviceError};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(CreateBindGroupError::Device(DeviceError::DeviceMismatch(_))) =
            error.downcast_ref()
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// What a call's error scopes caught, as this library's error.
fn caught_error(operation: &'static str, caught: Option<wgpu::Error>) -> Result<()> {
    match caught {
        Some(wgpu::Error::OutOfMemory { .. }) => Err(Error::OutOfMemory { operation }),
        Some(error) => Err(Error::Gpu {
            operation,
            message: error.to_string(),
        }),
        None => Ok(()),
    }
}

/// Every adapter the given backends expose, for `fused-optim info` and adapter selection.
/// Native only: a browser names no adapters.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(adapters(backends)).all
}

impl GpuContext {
    /// Opens the adapter named by the environment (see [`AdapterChoice::from_env`]), headless.
    /// Native only; [`GpuContext::new_async`] everywhere, the web included.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    /// [`GpuContext::new`] without blocking: in a browser, the page's WebGPU adapter.
    pub async fn new_async() -> Result<Self> {
        Self::open_async(&AdapterChoice::from_env()).await
    }

    /// Opens the first adapter matching `choice` (the default high-performance one when no
    /// name is given) with the adapter's own limits, not WebGPU's conservative defaults.
    /// Native only; [`GpuContext::open_async`] everywhere.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(choice: &AdapterChoice) -> Result<Self> {
        pollster::block_on(Self::open_async(choice))
    }

    /// [`GpuContext::open`] without blocking.
    pub async fn open_async(choice: &AdapterChoice) -> Result<Self> {
        let found = adapters(choice.backends).await;
        let adapter = match &choice.name {
            Some(name) => {
                let wanted = name.to_lowercase();
                let adapters = found.all;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| Error::NoAdapter {
                        detail: format!(
                            "none is named like `{name}` on {:?}; found: [{}]",
                            choice.backends,
                            names.join(", ")
                        ),
                    })?
            }
            None => found.preferred.map_err(|e| Error::NoAdapter {
                detail: format!("{e} on {:?}", choice.backends),
            })?,
        };
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fused-optim"),
                // Timestamps for the benchmark; immediates carry each dispatch's values.
                required_features: adapter.features()
                    & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::IMMEDIATES),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        Ok(Self::build(device, queue, info))
    }

    /// Wraps a device and queue the caller already owns. wgpu reports a lost device only
    /// through its device-lost callback, so this installs fused-optim's, replacing any the
    /// caller set: ask [`GpuContext::device_lost`] instead. The uncaptured-error handler stays
    /// the caller's; fused-optim only pushes error scopes.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::build(device, queue, info)
    }

    fn build(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let record = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *record.lock().unwrap() = Some(format!("{reason:?}: {message}"));
        });
        // In a browser, one thread: the scopes' futures the context keeps need not be Send.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        let inner = Arc::new(Inner {
            device,
            queue,
            info,
            kernels: Mutex::default(),
            lost,
            #[cfg(target_arch = "wasm32")]
            unsettled: Mutex::default(),
        });
        Self {
            dispatch: adapter_dispatch_limits(&inner.device.limits()),
            step_values: None,
            inner,
        }
    }

    /// The dispatch limits optimizers built from this context use.
    pub fn dispatch_limits(&self) -> DispatchLimits {
        self.dispatch
    }

    /// The same device with lower dispatch limits, for optimizers built from the returned
    /// context. Limits past the adapter's, or a window that is not a whole number of vec4s,
    /// are rejected.
    pub fn with_dispatch_limits(&self, limits: DispatchLimits) -> Result<Self> {
        let adapter = adapter_dispatch_limits(&self.limits());
        let window = limits.window_elements;
        crate::rule::check::require(
            window > 0 && window.is_multiple_of(4) && window <= adapter.window_elements,
            "window_elements",
            window as f64,
            "must be a positive multiple of 4 no larger than the adapter's window",
        )?;
        let workgroups = limits.workgroups_per_dimension;
        crate::rule::check::require(
            workgroups > 0 && workgroups <= adapter.workgroups_per_dimension,
            "workgroups_per_dimension",
            workgroups as f64,
            "must be positive and no larger than the adapter's limit",
        )?;
        Ok(Self {
            dispatch: limits,
            ..self.clone()
        })
    }

    /// How a kernel whose values take `bytes` gets them: immediates where the device has them
    /// and they fit, else a uniform copied in by each step, unless
    /// [`GpuContext::with_step_values`] chose one.
    pub fn step_values_for(&self, bytes: u64) -> StepValues {
        let device = &self.inner.device;
        let fits = device.features().contains(wgpu::Features::IMMEDIATES)
            && bytes <= device.limits().max_immediate_size as u64;
        match self.step_values {
            Some(chosen) => chosen,
            None if fits => StepValues::Immediates,
            None => StepValues::UniformCopy,
        }
    }

    /// The same device with every kernel built from the returned context getting its values
    /// the given way, e.g. to test the uniform path on an adapter with immediates. Immediates
    /// on a device without `wgpu::Features::IMMEDIATES`, or whose `max_immediate_size` is
    /// below what every rule needs, are rejected.
    pub fn with_step_values(&self, values: StepValues) -> Result<Self> {
        if values == StepValues::Immediates {
            let device = &self.inner.device;
            let limit = device.limits().max_immediate_size as u64;
            if !device.features().contains(wgpu::Features::IMMEDIATES)
                || limit < MAX_STEP_VALUES_BYTES
            {
                return Err(Error::Unsupported {
                    what: "immediates for the per-dispatch values",
                    detail: format!(
                        "the device needs wgpu::Features::IMMEDIATES and a max_immediate_size of \
                         at least {MAX_STEP_VALUES_BYTES} bytes (it has {limit}); use \
                         StepValues::UniformCopy"
                    ),
                });
            }
        }
        Ok(Self {
            step_values: Some(values),
            ..self.clone()
        })
    }

    /// Elements one storage binding may hold on this adapter (`window_elements` never exceeds it).
    pub(crate) fn binding_elements(&self) -> u64 {
        adapter_dispatch_limits(&self.limits()).window_elements
    }

    /// Why the device was lost, once it has been (checked without waiting).
    pub fn device_lost(&self) -> Option<String> {
        self.ensure_alive().err().map(|error| error.to_string())
    }

    /// The wgpu device, e.g. to create params and grads buffers on it.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue steps are submitted to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter's name, backend and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The device's limits: the adapter's own, unless the device came from the caller.
    pub fn limits(&self) -> wgpu::Limits {
        self.inner.device.limits()
    }

    /// Fails with `DeviceLost` once the device is gone. wgpu delivers the loss (and silently
    /// drops submissions to a lost device) only when the device is maintained, so this polls
    /// it first, without waiting. On the web, also fails with the first error the error scopes
    /// of earlier calls have caught since (see [`GpuContext::settle`]).
    pub(crate) fn ensure_alive(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| Error::DeviceLost {
                reason: e.to_string(),
            })?;
        if let Some(reason) = self.inner.lost.lock().unwrap().as_ref() {
            return Err(Error::DeviceLost {
                reason: reason.clone(),
            });
        }
        #[cfg(target_arch = "wasm32")]
        self.learn_settled()?;
        Ok(())
    }

    /// Runs `work` inside validation, out-of-memory and internal error scopes and turns the
    /// first error any of them caught into `Error::Gpu` (or `Error::OutOfMemory`), so wgpu
    /// never aborts the process. Checks the device afterwards, since work on a lost device is
    /// dropped without an error. For a caller's own wgpu work beside the optimizer's.
    ///
    /// On the web, WebGPU tells a scope's errors only through a promise: there `work`'s
    /// errors are returned by a later call on this context, the first after the browser
    /// answered, or by [`GpuContext::settle`], which waits for the answers.
    pub fn scoped<T>(&self, operation: &'static str, work: impl FnOnce() -> T) -> Result<T> {
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = work();
        let pops = [validation.pop(), memory.pop(), internal.pop()];
        #[cfg(not(target_arch = "wasm32"))]
        {
            // Popping resolves at once on native backends: errors are raised as commands are
            // made.
            let caught = pops.into_iter().find_map(pollster::block_on);
            self.ensure_alive()?;
            caught_error(operation, caught).map(|()| value)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let caught = Box::pin(async move {
                for pop in pops {
                    if let Some(error) = pop.await {
                        return Some(error);
                    }
                }
                None
            });
            self.inner
                .unsettled
                .lock()
                .unwrap()
                .push(Unsettled { operation, caught });
            self.ensure_alive()?;
            Ok(value)
        }
    }

    /// The first error of the earlier calls' scopes the browser has answered, without
    /// waiting; those answered are forgotten. The browser answers scopes in the order they
    /// were popped, so this stops at the first unanswered one.
    #[cfg(target_arch = "wasm32")]
    fn learn_settled(&self) -> Result<()> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut unsettled = self.inner.unsettled.lock().unwrap();
        let mut first = Ok(());
        while let Some(oldest) = unsettled.first_mut() {
            let std::task::Poll::Ready(caught) = oldest.caught.as_mut().poll(&mut context) else {
                break;
            };
            if first.is_ok() {
                first = caught_error(oldest.operation, caught);
            }
            unsettled.remove(0);
        }
        first
    }

    /// Waits until every GPU call made so far on this context has been checked, and returns
    /// the first error their scopes caught (once: an error is returned by one call only). On
    /// the web, where errors arrive through promises (see [`GpuContext::scoped`]), await it
    /// where a result must be known good; natively, errors are returned by the call that made
    /// them and this only checks the device.
    pub async fn settle(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            let unsettled = std::mem::take(&mut *self.inner.unsettled.lock().unwrap());
            let mut first = Ok(());
            for Unsettled { operation, caught } in unsettled {
                let caught = caught_error(operation, caught.await);
                if first.is_ok() {
                    first = caught;
                }
            }
            first?;
        }
        self.ensure_alive()
    }

    /// Whether `buffer` belongs to this context's device. wgpu offers no direct query, so this
    /// binds it in a throwaway bind group and looks for wgpu's device-mismatch error: a
    /// diagnosis for when binding has already failed, not a check for every step.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn owns(&self, buffer: &wgpu::Buffer) -> bool {
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("fused-optim device probe"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let _probe = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fused-optim device probe"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buffer.as_entire_binding(),
            }],
        });
        match pollster::block_on(scope.pop()) {
            Some(error) => !is_device_mismatch(&error),
            None => true,
        }
    }

    /// In a browser, undecidable: it answers a probe later, and in words, so the binding's own
    /// error stands.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn owns(&self, _buffer: &wgpu::Buffer) -> bool {
        true
    }

    /// The compiled kernel for `key`, built once per context and shared by every optimizer.
    pub(crate) fn kernel(
        &self,
        key: KernelKey,
        build: impl FnOnce() -> Kernel,
    ) -> Result<Arc<Kernel>> {
        let mut kernels = self.inner.kernels.lock().unwrap();
        if let Some(kernel) = kernels.get(&key) {
            return Ok(kernel.clone());
        }
        let kernel = Arc::new(self.scoped("building the update pipeline", build)?);
        kernels.insert(key, kernel.clone());
        Ok(kernel)
    }

    /// A new storage buffer holding `data`, usable as params, grads or state.
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.scoped("uploading a buffer", || {
            self.inner
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        })
    }

    /// A new storage buffer holding `bytes` (whole u32 words), e.g. 16-bit params from
    /// [`Dtype::encode`](crate::Dtype::encode).
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.scoped("uploading a buffer", || {
            self.inner
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
        })
    }

    /// A new zeroed storage buffer of `len` f32, e.g. the packed params or grads of a
    /// [`ParamLayout`](crate::ParamLayout).
    pub fn zeros(&self, label: &str, len: u64) -> Result<wgpu::Buffer> {
        let bytes = len.saturating_mul(4);
        let limit = self.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "a zeroed buffer",
                bytes,
                limit,
            });
        }
        self.scoped("allocating a buffer", || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Replaces the contents of `buffer` with `data` (queued; visible to the next submission).
    pub fn write(&self, buffer: &wgpu::Buffer, data: &[f32]) -> Result<()> {
        self.scoped("writing a buffer", || {
            self.inner
                .queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(data))
        })
    }

    /// Copies a whole buffer of f32 back to the host. Waits for the GPU: for tests,
    /// checkpoints and printing, never inside a step. Native only, as every call that waits;
    /// its `_async` twin everywhere.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        pollster::block_on(self.download_async(buffer))
    }

    /// [`GpuContext::download`] as a future, for a browser; natively it waits in place, as that
    /// does.
    pub async fn download_async(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        if !buffer.size().is_multiple_of(4) {
            return Err(Error::NotF32Sized {
                buffer: "downloaded".into(),
                bytes: buffer.size(),
            });
        }
        self.download_range_async(buffer, 0..buffer.size() / 4)
            .await
    }

    /// Copies elements `range` of a buffer of f32 back to the host, e.g. one tensor of a packed
    /// buffer. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_range(&self, buffer: &wgpu::Buffer, range: Range<u64>) -> Result<Vec<f32>> {
        pollster::block_on(self.download_range_async(buffer, range))
    }

    /// [`GpuContext::download_range`] as a future, for a browser; natively it waits in place, as
    /// that does.
    pub async fn download_range_async(
        &self,
        buffer: &wgpu::Buffer,
        range: Range<u64>,
    ) -> Result<Vec<f32>> {
        crate::rule::check::require(
            range.start <= range.end,
            "range.start",
            range.start as f64,
            "must not be past range.end",
        )?;
        let bytes = self
            .download_byte_range_async(buffer, range.start * 4..range.end * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copies a whole buffer back to the host as bytes, whatever its format (see
    /// [`Dtype::decode`](crate::Dtype::decode)). Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_bytes(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        pollster::block_on(self.download_bytes_async(buffer))
    }

    /// [`GpuContext::download_bytes`] as a future, for a browser; natively it waits in place, as
    /// that does.
    pub async fn download_bytes_async(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        self.download_byte_range_async(buffer, 0..buffer.size())
            .await
    }

    /// Copies bytes `range` of a buffer back to the host (both ends multiples of 4). Waits for
    /// the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_byte_range(&self, buffer: &wgpu::Buffer, range: Range<u64>) -> Result<Vec<u8>> {
        pollster::block_on(self.download_byte_range_async(buffer, range))
    }

    /// [`GpuContext::download_byte_range`] as a future, for a browser, where the readback
    /// resolves once the queue's earlier work is done.
    pub async fn download_byte_range_async(
        &self,
        buffer: &wgpu::Buffer,
        range: Range<u64>,
    ) -> Result<Vec<u8>> {
        crate::rule::check::require(
            range.start <= range.end
                && range.start.is_multiple_of(4)
                && range.end.is_multiple_of(4),
            "range.start",
            range.start as f64,
            "a byte range must be ordered and start and end on multiples of 4",
        )?;
        let device = &self.inner.device;
        let size = range.end - range.start;
        if size == 0 {
            return Ok(Vec::new());
        }
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        let staging = self.scoped("reading a buffer back", || {
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, range.start, &staging, 0, size);
            self.inner.queue.submit([encoder.finish()]);
            staging.map_async(wgpu::MapMode::Read, .., move |result| {
                sender.send(result).ok();
            });
            staging
        })?;
        self.wait_async().await?;
        let mapped = receiver.receive().await;
        let failed = |message: String| Error::Gpu {
            operation: "mapping a readback buffer",
            message,
        };
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(failed(e.to_string())),
            None => return Err(failed("the map callback never ran".into())),
        }
        let data = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| failed(e.to_string()))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(data)
    }

    /// Blocks until every submitted command has finished. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost {
                reason: e.to_string(),
            })?;
        self.ensure_alive()
    }

    /// Every submitted command finished, and every error of the calls before checked (see
    /// [`GpuContext::settle`]). Natively this waits in place, as [`GpuContext::wait`].
    pub async fn wait_async(&self) -> Result<()> {
        self.work_done().await?;
        self.settle().await
    }

    /// Every submitted command finished, the errors of earlier calls left for later.
    pub(crate) async fn work_done(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        #[cfg(target_arch = "wasm32")]
        {
            let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
            self.inner.queue.on_submitted_work_done(move || {
                sender.send(()).ok();
            });
            receiver.receive().await;
        }
        Ok(())
    }
}
