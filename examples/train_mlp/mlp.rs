//! A multilayer perceptron trained entirely on the GPU, with fused-optim's step recorded into
//! the same command encoder as the forward and backward passes, and its CPU twin: the library
//! of the example trainer, shared by `main.rs` (the command line) and `tests/train_mlp.rs`.

use fused_optim::{
    visit_rules, CpuOptimizer, Dtype, GpuContext, GradGuard, GradStatus, LrSchedule, ParamGroup,
    ParamLayout, ParamSet, Precision, RegisteredRule, RuleVisitor, TensorSlot, UpdateRule,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;

const SHADER: &str = include_str!("mlp.wgsl");
const WORKGROUP: u32 = 64;

/// A classification data set, standardised, split into train and test.
pub struct Data {
    pub features: usize,
    pub classes: usize,
    pub train_x: Vec<f32>,
    pub train_y: Vec<u32>,
    pub test_x: Vec<f32>,
    pub test_y: Vec<u32>,
}

/// The red wine quality data set (1599 wines, 11 physicochemical features, quality 3 to 8 as 6
/// classes) from `linfa-datasets`, shipped inside that crate. A fixed 80/20 split drawn with
/// `seed`; features standardised with the training split's mean and deviation.
pub fn wine_quality(seed: u64) -> Data {
    let dataset = linfa_datasets::winequality();
    let features = dataset.records.ncols();
    let rows: Vec<Vec<f64>> = dataset
        .records
        .rows()
        .into_iter()
        .map(|row| row.to_vec())
        .collect();
    let qualities: Vec<usize> = dataset.targets.iter().copied().collect();
    let lowest = *qualities.iter().min().expect("samples");
    let classes = qualities.iter().max().expect("samples") - lowest + 1;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let (train, test) = order.split_at(rows.len() * 4 / 5);
    let mean: Vec<f64> = (0..features)
        .map(|f| train.iter().map(|&r| rows[r][f]).sum::<f64>() / train.len() as f64)
        .collect();
    let deviation: Vec<f64> = (0..features)
        .map(|f| {
            let variance = train
                .iter()
                .map(|&r| (rows[r][f] - mean[f]).powi(2))
                .sum::<f64>()
                / train.len() as f64;
            variance.sqrt().max(1e-12)
        })
        .collect();
    let pick = |split: &[usize]| {
        let x = split
            .iter()
            .flat_map(|&r| (0..features).map(move |f| (r, f)))
            .map(|(r, f)| ((rows[r][f] - mean[f]) / deviation[f]) as f32)
            .collect();
        let y = split
            .iter()
            .map(|&r| (qualities[r] - lowest) as u32)
            .collect();
        (x, y)
    };
    let (train_x, train_y) = pick(train);
    let (test_x, test_y) = pick(test);
    Data {
        features,
        classes,
        train_x,
        train_y,
        test_x,
        test_y,
    }
}

/// What to train and how.
#[derive(Clone, Debug)]
pub struct Config {
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Stepped once per epoch, as PyTorch's schedulers usually are.
    pub schedule: LrSchedule,
    /// How the optimizer stores params, grads, master and state. With 16-bit params the
    /// forward pass reads them decoded to f32 each batch, so it sees exactly the 16-bit
    /// values; with 16-bit grads the backward pass's f32 grads are rounded to them before the
    /// step. The CPU twin stays in f32: it is the f32 run this one is compared with.
    pub precision: Precision,
    /// What the GPU run's optimizer does to the grads first (fused_optim::GradGuard): with a
    /// scaler, the loss gradient is multiplied by the scale the optimizer keeps on the
    /// device, and the step unscales, skips on inf or NaN and adapts the scale, all without
    /// a readback. The CPU twin runs without one.
    pub guard: Option<GradGuard>,
}

/// Loss after each epoch (the mean training loss over the epoch's batches) and test accuracy,
/// for the GPU run and its CPU twin.
#[derive(Clone, Debug)]
pub struct Run {
    pub optimizer: &'static str,
    pub parameters: usize,
    pub gpu_loss: Vec<f64>,
    pub cpu_loss: Vec<f64>,
    pub gpu_accuracy: f64,
    pub cpu_accuracy: f64,
    /// Mean cross-entropy over the test split, after the last epoch.
    pub gpu_test_loss: f64,
    pub cpu_test_loss: f64,
    /// The GPU optimizer's grad-guard status after each epoch, with a guard.
    pub guard_status: Vec<GradStatus>,
}

/// Learning rates that train this model in a few epochs, by variant name. A variant not
/// listed trains at its PyTorch default learning rate (or the caller's).
const TUNED_LR: &[(&str, f64)] = &[
    ("adam", 3e-3),
    ("adam-amsgrad", 3e-3),
    ("adamw", 3e-3),
    ("rmsprop", 1e-3),
    ("rmsprop-centered-momentum", 1e-3),
    ("sgd", 0.1),
    ("sgd-momentum", 0.05),
    ("sgd-nesterov", 0.05),
    ("adagrad", 0.05),
    ("radam", 1e-2),
    ("radamw", 1e-2),
    ("adamax", 5e-3),
    ("lion", 3e-3),
];

/// The optimizers the example trains with, by `--optimizer` name: every variant of every
/// registered rule (`adam`, `adamw`, `sgd-momentum`, ...), in registry order.
pub fn optimizers() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl RuleVisitor for Names {
        fn visit<R: RegisteredRule>(&mut self) {
            self.0.extend(R::variants().iter().map(UpdateRule::name));
        }
    }
    let mut names = Names(Vec::new());
    visit_rules(&mut names);
    names.0
}

/// Trains the registered variant named `optimizer` with `lr` (default: the tuned rate where
/// there is one, else the variant's own). Weights take the variant's weight decay (e.g.
/// AdamW's 0.01); biases form a second parameter group without.
pub fn train_named(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    optimizer: &str,
    lr: Option<f64>,
) -> Result<Run, Box<dyn std::error::Error>> {
    struct Find<'a> {
        gpu: &'a GpuContext,
        data: &'a Data,
        config: &'a Config,
        optimizer: &'a str,
        lr: Option<f64>,
        run: Option<Result<Run, Box<dyn std::error::Error>>>,
    }
    impl RuleVisitor for Find<'_> {
        fn visit<R: RegisteredRule>(&mut self) {
            let Some(mut rule) = R::variants()
                .into_iter()
                .find(|rule| rule.name() == self.optimizer)
            else {
                return;
            };
            let tuned = TUNED_LR.iter().find(|(name, _)| *name == self.optimizer);
            let run = match self.lr.or(tuned.map(|(_, lr)| *lr)) {
                Some(lr) => rule.set_hyperparameter("lr", lr.into()).map_err(Into::into),
                None => Ok(()),
            }
            .and_then(|()| train(self.gpu, self.data, self.config, rule));
            self.run = Some(run);
        }
    }
    let mut find = Find {
        gpu,
        data,
        config,
        optimizer,
        lr,
        run: None,
    };
    visit_rules(&mut find);
    find.run.unwrap_or_else(|| {
        Err(format!(
            "unknown optimizer `{optimizer}`; choose from {}",
            optimizers().join(", ")
        )
        .into())
    })
}

/// The model's tensors: `layer{k}.weight` ([inputs][outputs]) and `layer{k}.bias`.
fn tensors(widths: &[usize]) -> Vec<(String, usize)> {
    widths
        .windows(2)
        .enumerate()
        .flat_map(|(k, w)| {
            [
                (format!("layer{k}.weight"), w[0] * w[1]),
                (format!("layer{k}.bias"), w[1]),
            ]
        })
        .collect()
}

/// PyTorch's `nn.Linear` initialisation, U(-1/sqrt(inputs), 1/sqrt(inputs)) for weights and
/// biases, drawn in tensor order from `seed` into the packed layout.
fn initial_params(layout: &ParamLayout, widths: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params = vec![0.0; layout.len() as usize];
    for (k, w) in widths.windows(2).enumerate() {
        let bound = 1.0 / (w[0] as f32).sqrt();
        for name in [format!("layer{k}.weight"), format!("layer{k}.bias")] {
            for value in layout.view_mut(&mut params, &name).expect("registered") {
                *value = rng.random_range(-bound..bound);
            }
        }
    }
    params
}

/// Trains `rule` (weights) and `rule` without weight decay (biases) on the GPU and with the
/// CPU twin from the same initial weights and batch order, and reports both.
pub fn train<R: UpdateRule>(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    rule: R,
) -> Result<Run, Box<dyn std::error::Error>> {
    config.schedule.validate()?;
    let mut widths = vec![data.features];
    widths.extend(&config.hidden);
    widths.push(data.classes);
    let tensors = tensors(&widths);
    let (weights, biases): (Vec<_>, Vec<_>) = tensors
        .iter()
        .map(|(name, _)| name.clone())
        .partition(|name| name.ends_with("weight"));
    let mut no_decay = rule.clone();
    no_decay.set_hyperparameter("weight_decay", 0.0.into())?;
    let groups = vec![
        ParamGroup::new(rule.clone(), weights).with_precision(config.precision.clone()),
        ParamGroup::new(no_decay, biases).with_precision(config.precision.clone()),
    ];
    let mut set = ParamSet::new(gpu, &tensors, groups)?;
    if let Some(guard) = config.guard {
        set = set.with_grad_guard(guard)?;
    }
    let layout = set.layout().clone();
    let initial = initial_params(&layout, &widths, config.seed);
    let base_lrs: Vec<f64> = set.groups().iter().map(UpdateRule::lr).collect();
    let mut cpu = CpuModel::new(&layout, &set, &widths, config.batch, initial.clone());
    let mut model = GpuModel::new(
        gpu,
        set,
        &widths,
        config.batch,
        data,
        &initial,
        &config.precision,
    )?;
    let batches = data.train_y.len() / config.batch;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let (mut gpu_loss, mut cpu_loss, mut guard_status) = (Vec::new(), Vec::new(), Vec::new());
    for epoch in 0..config.epochs {
        for (group, base) in base_lrs.iter().enumerate() {
            let lr = config.schedule.lr(*base, epoch as u64);
            model.set.set_group_lr(group, lr)?;
            cpu.set_group_lr(group, lr)?;
        }
        // The epoch's batch order, the same for both; a short last batch is dropped.
        let mut order: Vec<usize> = (0..data.train_y.len()).collect();
        order.shuffle(&mut rng);
        let order = &order[..batches * config.batch];
        let x: Vec<f32> = order
            .iter()
            .flat_map(|&r| {
                data.train_x[r * data.features..(r + 1) * data.features]
                    .iter()
                    .copied()
            })
            .collect();
        let y: Vec<u32> = order.iter().map(|&r| data.train_y[r]).collect();
        gpu_loss.push(model.epoch(&x, &y)?);
        cpu_loss.push(cpu.epoch(&x, &y)?);
        // The epoch's losses were just read back, so this waits for nothing more.
        guard_status.extend(model.set.read_grad_status()?);
    }
    let gpu_logits = model.predict(&data.test_x, data.test_y.len())?;
    let cpu_logits = cpu.predict(&data.test_x, data.test_y.len());
    let gpu_accuracy = accuracy(&gpu_logits, &data.test_y, data.classes);
    let cpu_accuracy = accuracy(&cpu_logits, &data.test_y, data.classes);
    Ok(Run {
        optimizer: rule.name(),
        parameters: tensors.iter().map(|(_, len)| len).sum(),
        gpu_loss,
        cpu_loss,
        gpu_accuracy,
        cpu_accuracy,
        gpu_test_loss: cross_entropy(&gpu_logits, &data.test_y, data.classes),
        cpu_test_loss: cross_entropy(&cpu_logits, &data.test_y, data.classes),
        guard_status,
    })
}

/// Mean softmax cross-entropy of `logits` against `labels`, in f64.
fn cross_entropy(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let total: f64 = labels
        .iter()
        .zip(logits.chunks(classes))
        .map(|(&label, row)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            max + sum.ln() - row[label as usize] as f64
        })
        .sum();
    total / labels.len() as f64
}

/// Share of rows whose largest logit is the label.
fn accuracy(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(r, &label)| {
            let row = &logits[r * classes..(r + 1) * classes];
            let best = (0..classes).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            best == label as usize
        })
        .count();
    correct as f64 / labels.len() as f64
}

/// `Dims` in mlp.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    rows: u32,
    inputs: u32,
    outputs: u32,
    relu: u32,
}

/// The GPU side: packed params and grads bound to the layers as slices, activations and their
/// gradients per layer, and the whole training split resident for the epoch.
struct GpuModel<R: UpdateRule> {
    gpu: GpuContext,
    set: ParamSet<R>,
    params: wgpu::Buffer,
    widths: Vec<usize>,
    batch: usize,
    /// `activations[k]`: the input of layer k (k = 0 is the batch), [batch][widths[k]].
    activations: Vec<wgpu::Buffer>,
    epoch_x: wgpu::Buffer,
    epoch_y: wgpu::Buffer,
    labels: wgpu::Buffer,
    batch_loss: wgpu::Buffer,
    epoch_loss: wgpu::Buffer,
    test_logits: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// With 16-bit params or grads: the buffers the optimizer steps in their formats, and the
    /// conversions from and to the f32 buffers the layers bind.
    stored: Stored,
    /// One pass per step: (pipeline, bind group, invocations) in order.
    dispatches: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    /// The forward dispatches only, for prediction.
    forward: usize,
}

/// The optimizer's view of the params and grads where either is 16-bit.
struct Stored {
    params: Option<wgpu::Buffer>,
    grads: Option<wgpu::Buffer>,
    /// Decodes the 16-bit params into the f32 ones (before a forward pass).
    decode: Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    /// Rounds the f32 grads into the 16-bit ones (before the step).
    encode: Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
}

/// The conversions between the layers' f32 buffers and the optimizer's 16-bit ones, on the
/// codecs fused-optim's kernels use.
const CONVERT: &str = "
override F16: bool = false;
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

fn value(bits: u32) -> f32 {
    if F16 {
        return f16_value(bits);
    }
    return bf16_value(bits);
}

fn nearest(x: f32) -> u32 {
    if F16 {
        return f16_round(x, 0u, false);
    }
    return bf16_nearest(x);
}

@compute @workgroup_size(64)
fn decode(@builtin(global_invocation_id) id: vec3<u32>) {
    let w = id.x;
    if w >= arrayLength(&src) {
        return;
    }
    dst[2u * w] = bitcast<u32>(value(src[w] & 0xffffu));
    dst[2u * w + 1u] = bitcast<u32>(value(src[w] >> 16u));
}

@compute @workgroup_size(64)
fn encode(@builtin(global_invocation_id) id: vec3<u32>) {
    let w = id.x;
    if w >= arrayLength(&dst) {
        return;
    }
    dst[w] = nearest(bitcast<f32>(src[2u * w])) | (nearest(bitcast<f32>(src[2u * w + 1u])) << 16u);
}";

impl Stored {
    fn new(
        gpu: &GpuContext,
        precision: &Precision,
        initial: &[f32],
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> fused_optim::Result<Self> {
        let device = gpu.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mlp conversions"),
            source: wgpu::ShaderSource::Wgsl(format!("{}\n{CONVERT}", fused_optim::CODEC).into()),
        });
        let words = initial.len().div_ceil(2) as u32;
        let conversion = |entry: &str, dtype: Dtype, src: &wgpu::Buffer, dst: &wgpu::Buffer| {
            let f16 = [("F16", (dtype == Dtype::F16) as u32 as f64)];
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &f16,
                    ..Default::default()
                },
                cache: None,
            });
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(entry),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: src.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: dst.as_entire_binding(),
                    },
                ],
            });
            (pipeline, group, words)
        };
        let mut stored = Self {
            params: None,
            grads: None,
            decode: None,
            encode: None,
        };
        if precision.params != Dtype::F32 {
            let buffer =
                gpu.upload_bytes("mlp params (stored)", &precision.params.encode(initial))?;
            stored.decode = Some(conversion("decode", precision.params, &buffer, params));
            stored.params = Some(buffer);
        }
        if precision.grads != Dtype::F32 {
            let zeros = precision.grads.encode(&vec![0.0; initial.len()]);
            let buffer = gpu.upload_bytes("mlp grads (stored)", &zeros)?;
            stored.encode = Some(conversion("encode", precision.grads, grads, &buffer));
            stored.grads = Some(buffer);
        }
        Ok(stored)
    }

    /// Records `conversion`, if there is one, as a pass of its own.
    fn record(
        encoder: &mut wgpu::CommandEncoder,
        conversion: &Option<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    ) {
        if let Some((pipeline, group, words)) = conversion {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(words.div_ceil(WORKGROUP), 1, 1);
        }
    }
}

impl<R: UpdateRule> GpuModel<R> {
    fn new(
        gpu: &GpuContext,
        set: ParamSet<R>,
        widths: &[usize],
        batch: usize,
        data: &Data,
        initial: &[f32],
        precision: &Precision,
    ) -> fused_optim::Result<Self> {
        let device = gpu.device();
        let layout = set.layout().clone();
        let params = gpu.upload("mlp params", initial)?;
        let grads = gpu.zeros("mlp grads", layout.len())?;
        let floats = |label: &str, len: usize| gpu.zeros(label, len as u64);
        let activations = widths
            .iter()
            .map(|&w| floats("activation", batch * w))
            .collect::<fused_optim::Result<Vec<_>>>()?;
        let deltas = widths[1..]
            .iter()
            .map(|&w| floats("activation gradient", batch * w))
            .collect::<fused_optim::Result<Vec<_>>>()?;
        let rows = data
            .train_y
            .len()
            .max(data.test_y.len().next_multiple_of(batch));
        let epoch_x = floats("epoch inputs", rows * data.features)?;
        let epoch_y = floats("epoch labels", rows)?;
        let labels = floats("batch labels", batch)?;
        let batch_loss = floats("batch loss", batch)?;
        let epoch_loss = floats("epoch loss", rows)?;
        let classes = *widths.last().expect("layers");
        let test_logits = floats(
            "test logits",
            data.test_y.len().next_multiple_of(batch) * classes,
        )?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mlp"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let [forward, softmax, backward_params, backward_input] = [
            "linear_forward",
            "softmax_cross_entropy",
            "linear_backward_params",
            "linear_backward_input",
        ]
        .map(pipeline);
        fn whole(buffer: &wgpu::Buffer) -> wgpu::BufferBinding<'_> {
            buffer.as_entire_buffer_binding()
        }
        let bind = |pipeline: &wgpu::ComputePipeline,
                    dims: Dims,
                    buffers: Vec<wgpu::BufferBinding>| {
            let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("mlp dims"),
                contents: bytemuck::bytes_of(&dims),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(uniform.as_entire_binding())
                .chain(buffers.into_iter().map(wgpu::BindingResource::Buffer))
                .zip(0..)
                .map(|(resource, binding)| wgpu::BindGroupEntry { binding, resource })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("mlp"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        };
        let slot = |name: String| -> &TensorSlot { layout.tensor(&name).expect("registered") };
        let layers = widths.len() - 1;
        let mut dispatches = Vec::new();
        for k in 0..layers {
            let (inputs, outputs) = (widths[k] as u32, widths[k + 1] as u32);
            let dims = Dims {
                rows: batch as u32,
                inputs,
                outputs,
                relu: (k + 1 < layers) as u32,
            };
            let weight = slot(format!("layer{k}.weight")).binding(&params);
            let bias = slot(format!("layer{k}.bias")).binding(&params);
            let group = bind(
                &forward,
                dims,
                vec![
                    whole(&activations[k]),
                    weight,
                    bias,
                    whole(&activations[k + 1]),
                ],
            );
            dispatches.push((forward.clone(), group, batch as u32 * outputs));
        }
        let classes = classes as u32;
        let dims = Dims {
            rows: batch as u32,
            inputs: 0,
            outputs: classes,
            relu: 0,
        };
        // The loss scale: the first f32 of the optimizer's grad status, or a 1.
        let unscaled = gpu.upload("mlp unit loss scale", &[1.0])?;
        let loss_scale = set.grad_status_buffer().unwrap_or(&unscaled);
        let group = bind(
            &softmax,
            dims,
            vec![
                whole(&activations[layers]),
                whole(&labels),
                whole(&batch_loss),
                whole(&deltas[layers - 1]),
                wgpu::BufferBinding {
                    buffer: loss_scale,
                    offset: 0,
                    size: wgpu::BufferSize::new(4),
                },
            ],
        );
        dispatches.push((softmax, group, batch as u32));
        for k in (0..layers).rev() {
            let (inputs, outputs) = (widths[k] as u32, widths[k + 1] as u32);
            let dims = Dims {
                rows: batch as u32,
                inputs,
                outputs,
                relu: 0,
            };
            let dweight = slot(format!("layer{k}.weight")).binding(&grads);
            let dbias = slot(format!("layer{k}.bias")).binding(&grads);
            let group = bind(
                &backward_params,
                dims,
                vec![whole(&activations[k]), whole(&deltas[k]), dweight, dbias],
            );
            dispatches.push((backward_params.clone(), group, inputs * outputs));
            if k > 0 {
                let weight = slot(format!("layer{k}.weight")).binding(&params);
                let group = bind(
                    &backward_input,
                    dims,
                    vec![
                        whole(&deltas[k]),
                        weight,
                        whole(&activations[k]),
                        whole(&deltas[k - 1]),
                    ],
                );
                dispatches.push((backward_input.clone(), group, batch as u32 * inputs));
            }
        }
        let stored = Stored::new(gpu, precision, initial, &params, &grads)?;
        Ok(Self {
            gpu: gpu.clone(),
            set,
            params,
            widths: widths.to_vec(),
            batch,
            activations,
            epoch_x,
            epoch_y,
            labels,
            batch_loss,
            epoch_loss,
            test_logits,
            stored,
            grads,
            dispatches,
            forward: layers,
        })
    }

    /// Records `count` dispatches from the start of the list into one pass.
    fn record(&self, encoder: &mut wgpu::CommandEncoder, count: usize) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for (pipeline, group, invocations) in &self.dispatches[..count] {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(invocations.div_ceil(WORKGROUP), 1, 1);
        }
    }

    /// One epoch over `x`/`y` (already in batch order): per batch, one encoder with the batch
    /// copy, forward, loss, backward and the fused optimizer step. Reads back only the epoch's
    /// losses, once, at the end. Returns the mean loss.
    fn epoch(&mut self, x: &[f32], y: &[u32]) -> fused_optim::Result<f64> {
        let (gpu, features) = (self.gpu.clone(), self.widths[0] as u64);
        gpu.queue()
            .write_buffer(&self.epoch_x, 0, bytemuck::cast_slice(x));
        gpu.queue()
            .write_buffer(&self.epoch_y, 0, bytemuck::cast_slice(y));
        let rows = self.batch as u64;
        for b in 0..y.len() as u64 / rows {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(
                &self.epoch_x,
                b * rows * features * 4,
                &self.activations[0],
                0,
                rows * features * 4,
            );
            encoder.copy_buffer_to_buffer(&self.epoch_y, b * rows * 4, &self.labels, 0, rows * 4);
            Stored::record(&mut encoder, &self.stored.decode);
            self.record(&mut encoder, self.dispatches.len());
            Stored::record(&mut encoder, &self.stored.encode);
            encoder.copy_buffer_to_buffer(
                &self.batch_loss,
                0,
                &self.epoch_loss,
                b * rows * 4,
                rows * 4,
            );
            let params = self.stored.params.as_ref().unwrap_or(&self.params);
            let grads = self.stored.grads.as_ref().unwrap_or(&self.grads);
            self.set.record_step(&mut encoder, params, grads)?;
            gpu.queue().submit([encoder.finish()]);
        }
        let losses = gpu.download_range(&self.epoch_loss, 0..y.len() as u64)?;
        Ok(losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64)
    }

    /// Logits of `rows` rows of `x`, forward only, in batches.
    fn predict(&self, x: &[f32], rows: usize) -> fused_optim::Result<Vec<f32>> {
        let gpu = &self.gpu;
        let (features, classes) = (
            self.widths[0] as u64,
            *self.widths.last().expect("layers") as u64,
        );
        let mut padded = x.to_vec();
        padded.resize(rows.next_multiple_of(self.batch) * features as usize, 0.0);
        gpu.queue()
            .write_buffer(&self.epoch_x, 0, bytemuck::cast_slice(&padded));
        let batch = self.batch as u64;
        let logits = self.activations.last().expect("layers");
        for b in 0..rows.div_ceil(self.batch) as u64 {
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(
                &self.epoch_x,
                b * batch * features * 4,
                &self.activations[0],
                0,
                batch * features * 4,
            );
            Stored::record(&mut encoder, &self.stored.decode);
            self.record(&mut encoder, self.forward);
            encoder.copy_buffer_to_buffer(
                logits,
                0,
                &self.test_logits,
                b * batch * classes * 4,
                batch * classes * 4,
            );
            gpu.queue().submit([encoder.finish()]);
        }
        gpu.download_range(&self.test_logits, 0..rows as u64 * classes)
    }
}

/// The CPU twin of `GpuModel`: the same packed params, the same loops in the same order
/// (mlp.wgsl), and the optimizer's CPU twin per tensor with its group's rule.
struct CpuModel<R: UpdateRule> {
    params: Vec<f32>,
    grads: Vec<f32>,
    layout: ParamLayout,
    twins: Vec<CpuOptimizer<R>>,
    widths: Vec<usize>,
    batch: usize,
}

impl<R: UpdateRule> CpuModel<R> {
    fn new(
        layout: &ParamLayout,
        set: &ParamSet<R>,
        widths: &[usize],
        batch: usize,
        params: Vec<f32>,
    ) -> Self {
        let twins = layout
            .tensors()
            .iter()
            .map(|slot| {
                CpuOptimizer::new(set.groups()[slot.group].clone(), slot.len as usize)
                    .expect("valid rule")
            })
            .collect();
        Self {
            grads: vec![0.0; params.len()],
            params,
            layout: layout.clone(),
            twins,
            widths: widths.to_vec(),
            batch,
        }
    }

    fn set_group_lr(&mut self, group: usize, lr: f64) -> fused_optim::Result<()> {
        for (slot, twin) in self.layout.tensors().iter().zip(&mut self.twins) {
            if slot.group == group {
                twin.set_lr(lr)?;
            }
        }
        Ok(())
    }

    fn tensor(&self, name: String) -> std::ops::Range<usize> {
        self.layout.tensor(&name).expect("registered").range()
    }

    /// Activations of every layer for `rows` rows of `x`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<Vec<f32>> {
        let layers = self.widths.len() - 1;
        let mut activations = vec![x.to_vec()];
        for k in 0..layers {
            let (inputs, outputs) = (self.widths[k], self.widths[k + 1]);
            let weight = &self.params[self.tensor(format!("layer{k}.weight"))];
            let bias = &self.params[self.tensor(format!("layer{k}.bias"))];
            let input = &activations[k];
            let mut output = vec![0.0; rows * outputs];
            for r in 0..rows {
                for j in 0..outputs {
                    let mut sum = bias[j];
                    for i in 0..inputs {
                        sum += input[r * inputs + i] * weight[i * outputs + j];
                    }
                    output[r * outputs + j] = if k + 1 < layers { sum.max(0.0) } else { sum };
                }
            }
            activations.push(output);
        }
        activations
    }

    fn epoch(&mut self, x: &[f32], y: &[u32]) -> fused_optim::Result<f64> {
        let (rows, features) = (self.batch, self.widths[0]);
        let mut total = 0.0;
        for b in 0..y.len() / rows {
            let batch_x = &x[b * rows * features..(b + 1) * rows * features];
            let batch_y = &y[b * rows..(b + 1) * rows];
            total += self
                .step(batch_x, batch_y)?
                .iter()
                .map(|&l| l as f64)
                .sum::<f64>();
        }
        Ok(total / (y.len() / rows * rows) as f64)
    }

    /// One training step; returns the batch's per-row losses.
    fn step(&mut self, x: &[f32], y: &[u32]) -> fused_optim::Result<Vec<f32>> {
        let rows = self.batch;
        let layers = self.widths.len() - 1;
        let activations = self.forward(x, rows);
        let classes = self.widths[layers];
        let logits = &activations[layers];
        let mut losses = vec![0.0; rows];
        let mut delta = vec![0.0; rows * classes];
        for r in 0..rows {
            let row = &logits[r * classes..(r + 1) * classes];
            let top = row[1..].iter().fold(row[0], |m, &z| m.max(z));
            let total: f32 = row.iter().fold(0.0, |t, &z| t + (z - top).exp());
            let label = y[r] as usize;
            losses[r] = total.ln() + top - row[label];
            let scale = 1.0 / rows as f32;
            for j in 0..classes {
                let p = (row[j] - top).exp() / total;
                delta[r * classes + j] = (p - if j == label { 1.0 } else { 0.0 }) * scale;
            }
        }
        for k in (0..layers).rev() {
            let (inputs, outputs) = (self.widths[k], self.widths[k + 1]);
            let input = &activations[k];
            let (weights, biases) = (
                self.tensor(format!("layer{k}.weight")),
                self.tensor(format!("layer{k}.bias")),
            );
            for i in 0..inputs {
                for j in 0..outputs {
                    let mut sum = 0.0;
                    for r in 0..rows {
                        sum += input[r * inputs + i] * delta[r * outputs + j];
                    }
                    self.grads[weights.start + i * outputs + j] = sum;
                }
            }
            for j in 0..outputs {
                let mut sum = 0.0;
                for r in 0..rows {
                    sum += delta[r * outputs + j];
                }
                self.grads[biases.start + j] = sum;
            }
            if k > 0 {
                let weight = &self.params[weights];
                let mut below = vec![0.0; rows * inputs];
                for r in 0..rows {
                    for i in 0..inputs {
                        let mut sum = 0.0;
                        for j in 0..outputs {
                            sum += delta[r * outputs + j] * weight[i * outputs + j];
                        }
                        below[r * inputs + i] = if input[r * inputs + i] > 0.0 {
                            sum
                        } else {
                            0.0
                        };
                    }
                }
                delta = below;
            }
        }
        for (slot, twin) in self.layout.tensors().iter().zip(&mut self.twins) {
            let range = slot.range();
            twin.step(&mut self.params[range.clone()], &self.grads[range])?;
        }
        Ok(losses)
    }

    fn predict(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.forward(x, rows).pop().expect("layers")
    }
}
