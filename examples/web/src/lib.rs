//! fused-optim in the browser, on the page's WebGPU adapter: the benchmark's fused step beside
//! its stream floor (the roofline rule, moving the same bytes with no arithmetic), and the MLP
//! example (`examples/train_mlp`) trained in the page. `www/app.js` calls these through
//! wasm-bindgen; every function that waits for the GPU returns a Promise.
//!
//! Built for wasm32 only (see `serve`): natively this crate is empty.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use fused_optim::baseline::Roofline;
use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{GpuContext, LrSchedule, Optimizer, Precision, UpdateRule};
use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;

thread_local! {
    /// The page's one GPU context, opened by the first call that needs it.
    static GPU: RefCell<Option<GpuContext>> = const { RefCell::new(None) };
}

/// The page's GPU context; opens the browser's adapter on first use.
async fn gpu() -> Result<GpuContext, JsError> {
    if let Some(gpu) = GPU.with_borrow(Clone::clone) {
        return Ok(gpu);
    }
    let gpu = GpuContext::new_async().await.map_err(js)?;
    GPU.set(Some(gpu.clone()));
    Ok(gpu)
}

/// Any error as a JS `Error` with its message.
fn js(error: impl std::fmt::Display) -> JsError {
    JsError::new(&error.to_string())
}

/// A plain JS object of `fields`.
fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in fields {
        Reflect::set(&object, &(*key).into(), value).expect("setting a field of a new object");
    }
    object.into()
}

/// Milliseconds on the page's monotonic clock (`std::time::Instant` panics on wasm32).
fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|window| window.performance())
        .map_or_else(js_sys::Date::now, |performance| performance.now())
}

/// The adapter: `{ name, backend, device_type, driver, timestamp_query, immediates,
/// features }`, `features` being wgpu's names of the device's features.
#[wasm_bindgen]
pub async fn adapter() -> Result<JsValue, JsError> {
    let gpu = gpu().await?;
    let info = gpu.adapter_info();
    let features = gpu.device().features();
    let names: Array = features
        .iter_names()
        .map(|(name, _)| JsValue::from(name))
        .collect();
    Ok(object(&[
        ("name", info.name.as_str().into()),
        ("backend", format!("{:?}", info.backend).into()),
        ("device_type", format!("{:?}", info.device_type).into()),
        ("driver", info.driver.as_str().into()),
        (
            "timestamp_query",
            features.contains(wgpu::Features::TIMESTAMP_QUERY).into(),
        ),
        (
            "immediates",
            features.contains(wgpu::Features::IMMEDIATES).into(),
        ),
        ("features", names.into()),
    ]))
}

/// The name of every variant of every registered rule (`adam`, `adamw`, `sgd-momentum`, ...),
/// in registry order: what [`bench`] and [`train`] take.
#[wasm_bindgen]
pub fn rules() -> Vec<String> {
    struct Names(Vec<String>);
    impl RuleVisitor for Names {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0
                .extend(R::variants().iter().map(|rule| rule.name().to_owned()));
        }
    }
    let mut names = Names(Vec::new());
    visit_rules(&mut names);
    names.0
}

/// What [`bench`] measured, its rule's type erased.
type Measuring = Pin<Box<dyn Future<Output = Result<JsValue, JsError>>>>;

/// Times `steps` fused steps of the rule variant named `rule` over `size` parameters stored as
/// `precision` (`f32`, `bf16,master=remainder,state=8bit`, ...), then as many steps of its two
/// floors, as `fused-optim bench` measures them: the byte floor, a plain f32 stream of the
/// same number of bytes with no decoding (the floor a format is held to: its codec's cost
/// counts against it), and the format floor, the roofline rule with as many state buffers in
/// the same formats, moving the same bytes through the same codecs with no update arithmetic.
/// In f32 the two are one. Wall clock around the submitted steps and the wait for them, after
/// two untimed steps. Resolves to `{ rule, precision, params, steps, ms_per_step,
/// bytes_per_step, bytes_per_param, gb_per_s, floor_ms_per_step, floor_gb_per_s, floor_ratio,
/// format_floor_ms_per_step, format_floor_ratio }`, GB being 10^9 bytes and each ratio the
/// fused step's time over that floor's (1 is the floor).
#[wasm_bindgen]
pub async fn bench(
    rule: String,
    size: u32,
    precision: String,
    steps: u32,
) -> Result<JsValue, JsError> {
    struct Find<'a> {
        name: &'a str,
        run: Option<Measuring>,
        gpu: GpuContext,
        precision: Precision,
        len: usize,
        steps: u32,
    }
    impl RuleVisitor for Find<'_> {
        fn visit<R: RegisteredRule>(&mut self) {
            if let Some(rule) = R::variants().into_iter().find(|r| r.name() == self.name) {
                let (gpu, precision) = (self.gpu.clone(), self.precision.clone());
                let (len, steps) = (self.len, self.steps);
                self.run = Some(Box::pin(async move {
                    measure(&gpu, rule, &precision, len, steps).await
                }));
            }
        }
    }
    if size == 0 || steps == 0 {
        return Err(JsError::new("size and steps must be at least 1"));
    }
    let mut find = Find {
        name: &rule,
        run: None,
        gpu: gpu().await?,
        precision: precision.parse().map_err(js)?,
        len: size as usize,
        steps,
    };
    visit_rules(&mut find);
    match find.run {
        Some(run) => run.await,
        None => Err(js(format_args!("unknown rule `{rule}`"))),
    }
}

/// [`bench`] for one rule type.
async fn measure<R: UpdateRule>(
    gpu: &GpuContext,
    rule: R,
    precision: &Precision,
    len: usize,
    steps: u32,
) -> Result<JsValue, JsError> {
    let name = rule.name();
    let (format_floor, floor_precision) = Roofline::format_floor(&rule, precision);
    let (ms, bytes) = time_steps(gpu, rule, precision, len, steps).await?;
    // Both floors move the rule's bytes: their GB/s are over the same count.
    let (format_floor_ms, _) = time_steps(gpu, format_floor, &floor_precision, len, steps).await?;
    let f32 = Precision::default();
    let floor_ms = if *precision == f32 {
        format_floor_ms
    } else {
        let floor_len = format_floor.byte_floor_len(bytes);
        time_steps(gpu, format_floor, &f32, floor_len, steps)
            .await?
            .0
    };
    let gb_per_s = |ms: f64| bytes as f64 / ms / 1e6;
    Ok(object(&[
        ("rule", name.into()),
        ("precision", precision.to_string().into()),
        ("params", len.into()),
        ("steps", steps.into()),
        ("ms_per_step", ms.into()),
        ("bytes_per_step", (bytes as f64).into()),
        ("bytes_per_param", (bytes as f64 / len as f64).into()),
        ("gb_per_s", gb_per_s(ms).into()),
        ("floor_ms_per_step", floor_ms.into()),
        ("floor_gb_per_s", gb_per_s(floor_ms).into()),
        ("floor_ratio", (ms / floor_ms).into()),
        ("format_floor_ms_per_step", format_floor_ms.into()),
        ("format_floor_ratio", (ms / format_floor_ms).into()),
    ]))
}

/// Milliseconds per step of `rule` over `len` parameters, and the bytes a step moves.
async fn time_steps<R: UpdateRule>(
    gpu: &GpuContext,
    rule: R,
    precision: &Precision,
    len: usize,
    steps: u32,
) -> Result<(f64, u64), JsError> {
    // Small non-zero values, as the native benchmark's.
    let values: Vec<f32> = (0..len).map(|i| 1e-3 * ((i % 997) as f32 + 1.0)).collect();
    let upload = |label, bytes: Vec<u8>| gpu.upload_bytes(label, &bytes).map_err(js);
    let params = upload("bench params", precision.params.encode(&values))?;
    let grads = upload("bench grads", precision.grads.encode(&values))?;
    let mut optimizer = Optimizer::with_precision(gpu, rule, precision.clone(), len).map_err(js)?;
    // Untimed: the first step builds the pipeline.
    for _ in 0..2 {
        optimizer.step(&params, &grads).map_err(js)?;
    }
    gpu.wait_async().await.map_err(js)?;
    let start = now_ms();
    for _ in 0..steps {
        optimizer.step(&params, &grads).map_err(js)?;
    }
    gpu.wait_async().await.map_err(js)?;
    let ms = (now_ms() - start) / steps as f64;
    Ok((ms, optimizer.bytes_per_step()))
}

/// Trains the MLP example (`examples/train_mlp`: the red wine quality data, two hidden layers
/// of 64, batches of 32, seed 7, a cosine schedule over the run, as its command line's
/// defaults) with the rule variant named `optimizer` at its tuned learning rate, the GPU run
/// stored as `precision`, for `epochs` epochs. Calls `on_epoch(epoch, loss)` with each
/// epoch's mean training loss (epochs from 0) as the GPU's losses are read back. Resolves to
/// `{ optimizer, precision, parameters, gpu_loss, cpu_loss, gpu_accuracy, cpu_accuracy,
/// gpu_test_loss, cpu_test_loss, ms }`; the `cpu_` ones are the f32 CPU twin's, trained
/// beside it from the same weights in the same batch order.
#[wasm_bindgen]
pub async fn train(
    optimizer: String,
    precision: String,
    epochs: u32,
    on_epoch: js_sys::Function,
) -> Result<JsValue, JsError> {
    let gpu = gpu().await?;
    let precision: Precision = precision.parse().map_err(js)?;
    let seed = 7;
    let data = train_mlp::wine_quality(seed);
    let config = train_mlp::Config {
        hidden: vec![64, 64],
        batch: 32,
        epochs: epochs as usize,
        seed,
        schedule: LrSchedule::Cosine {
            t_max: (epochs as u64).max(1),
            eta_min: 0.0,
        },
        precision: precision.clone(),
        guard: None,
        save: None,
        resume: None,
    };
    let start = now_ms();
    let mut report = |epoch: usize, loss: f64| {
        // A throwing callback is the page's bug; training goes on.
        let _ = on_epoch.call2(&JsValue::NULL, &epoch.into(), &loss.into());
    };
    let run = train_mlp::train_named_async(&gpu, &data, &config, &optimizer, None, &mut report)
        .await
        .map_err(js)?;
    let losses =
        |losses: &[f64]| JsValue::from(losses.iter().map(|&l| JsValue::from(l)).collect::<Array>());
    Ok(object(&[
        ("optimizer", run.optimizer.into()),
        ("precision", precision.to_string().into()),
        ("parameters", run.parameters.into()),
        ("gpu_loss", losses(&run.gpu_loss)),
        ("cpu_loss", losses(&run.cpu_loss)),
        ("gpu_accuracy", run.gpu_accuracy.into()),
        ("cpu_accuracy", run.cpu_accuracy.into()),
        ("gpu_test_loss", run.gpu_test_loss.into()),
        ("cpu_test_loss", run.cpu_test_loss.into()),
        ("ms", (now_ms() - start).into()),
    ]))
}
