//! A multilayer perceptron trained entirely on the GPU, with fused-optim's step recorded into
//! the same command encoder as the forward and backward passes, and its CPU twin: the library
//! of the example trainer, shared by `main.rs` (the command line) and `tests/train_mlp.rs`.
//!
//! A run saves itself after every epoch (`Config::save`) as two files: the optimizer's
//! checkpoint ([`OPTIMIZER_FILE`]) and the model's params with what resuming needs
//! ([`MODEL_FILE`]); a run given them (`Config::resume`) continues on the GPU bit for bit as
//! the uninterrupted run would have.
//!
//! Training is async underneath ([`train_async`]), so it runs in a browser too, where every
//! readback is a promise (examples/web); natively [`train`] blocks on it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use fused_optim::tooling::{visit_rules, RegisteredRule, RuleVisitor};
use fused_optim::{
    CpuOptimizer, Dtype, GpuContext, GradGuard, GradStatus, LrSchedule, ParamGroup, ParamLayout,
    ParamSet, PendingCheckpoint, Precision, TensorSlot, UpdateRule,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use wgpu::util::DeviceExt;

// The save files, native only.
#[cfg(not(target_arch = "wasm32"))]
use {
    fused_optim::checkpoint::{FORMAT_VERSION, VERSION_KEY},
    fused_optim::{Checkpoint, HostTensor, TensorDtype},
    std::{collections::BTreeMap, path::Path},
};

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
    /// Widths of the hidden layers.
    pub hidden: Vec<usize>,
    /// Rows per batch; a short last batch of an epoch is dropped.
    pub batch: usize,
    /// Epochs in all, those of a resumed run included.
    pub epochs: usize,
    /// Seeds the initial weights and the batch order.
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
    /// Save the run into this directory after every epoch ([`OPTIMIZER_FILE`] and
    /// [`MODEL_FILE`], each replaced crash-safely); created if missing.
    pub save: Option<PathBuf>,
    /// Continue the run saved in this directory from its next epoch up to `epochs`. Every
    /// setting but `epochs` and `schedule` must be the saved run's.
    pub resume: Option<PathBuf>,
}

/// Loss after each epoch (the mean training loss over the epoch's batches) and test accuracy,
/// for the GPU run and its CPU twin.
#[derive(Clone, Debug)]
pub struct Run {
    /// The variant's name (`adam`, `sgd-momentum`, ...).
    pub optimizer: &'static str,
    /// Parameters of the model.
    pub parameters: usize,
    /// The GPU run's loss after every epoch, from the first: a resumed run's earlier epochs
    /// come from the saved run.
    pub gpu_loss: Vec<f64>,
    /// The CPU twin's loss after each of the first `cpu_loss.len()` epochs: the twin keeps
    /// its optimizer state on the host, which a checkpoint of the GPU optimizer cannot give
    /// back, so it trains only alongside a run from the start, and a resumed run has its
    /// losses up to the first resume and none after.
    pub cpu_loss: Vec<f64>,
    /// Share of the test split the GPU model classifies right, after the last epoch.
    pub gpu_accuracy: f64,
    /// The CPU twin's, where it trained alongside (not in a resumed run).
    pub cpu_accuracy: Option<f64>,
    /// Mean cross-entropy over the test split, after the last epoch.
    pub gpu_test_loss: f64,
    /// The CPU twin's, where it trained alongside (not in a resumed run).
    pub cpu_test_loss: Option<f64>,
    /// The GPU optimizer's grad-guard status after each epoch this run trained (those after
    /// `resumed.epochs` in a resumed run), with a guard.
    pub guard_status: Vec<GradStatus>,
    /// Where the run was resumed, if it was.
    pub resumed: Option<Resumed>,
}

/// What a resumed run took over from the saved run.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Epochs the saved run had trained; this run trained the ones after.
    pub epochs: usize,
    /// The saved run's lr schedule as `{:?}` prints it. The trainer's cosine schedule spans
    /// `--epochs`, so a run resumed with more epochs than the saved run planned follows
    /// another curve from here on than an uninterrupted run of the saved run's would have.
    pub schedule: String,
}

/// The optimizer's checkpoint in a save directory: [`ParamSet::record_checkpoint`]'s, every
/// state, master, step count and the grad guard's status, named by tensor; its metadata adds
/// `train_mlp.params_fnv1a`, a hash of the params saved with it in [`MODEL_FILE`], so that
/// resuming refuses files of two saves.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The model in a save directory: a [`Checkpoint`] container holding each tensor
/// (`layer{k}.weight`, `[inputs, outputs]`, and `layer{k}.bias`) in the params' storage format
/// (f32, bf16 or f16), and metadata under `train_mlp.`: the epochs done,
/// the optimizer's step count, the settings the run must resume with, the schedule and the
/// loss history.
pub const MODEL_FILE: &str = "model.safetensors";

/// Why a run cannot resume from a save directory. Nothing was trained.
#[derive(Debug)]
pub enum ResumeError {
    /// A file is missing, unreadable or corrupt, or the optimizer refused its checkpoint.
    File {
        /// The file.
        path: PathBuf,
        /// What fused-optim said.
        source: fused_optim::Error,
    },
    /// The model file lacks or misstates something it must hold.
    Corrupt {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The saved run had another setting than this one.
    Mismatch {
        /// The model file.
        path: PathBuf,
        /// The setting (`optimizer`, `precision`, ...).
        setting: &'static str,
        /// The saved run's.
        saved: String,
        /// This run's.
        now: String,
    },
    /// The two files are not of one save: a save cut off between them, or files of two runs.
    Unpaired {
        /// The directory.
        dir: PathBuf,
        /// How they differ.
        reason: String,
    },
    /// The saved run had trained more epochs than this run asks for.
    PastEpochs {
        /// Epochs the saved run trained.
        done: usize,
        /// Epochs this run asks for in all.
        epochs: usize,
    },
}

impl std::fmt::Display for ResumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // fused-optim's Io errors name the file already.
            ResumeError::File {
                source: source @ fused_optim::Error::Io { .. },
                ..
            } => write!(f, "cannot resume: {source}"),
            ResumeError::File { path, source } => {
                write!(f, "cannot resume from {}: {source}", path.display())
            }
            ResumeError::Corrupt { path, reason } => {
                write!(f, "cannot resume from {}: {reason}", path.display())
            }
            ResumeError::Mismatch {
                path,
                setting,
                saved,
                now,
            } => write!(
                f,
                "cannot resume from {}: the saved run's {setting} is `{saved}`, this run's \
                 `{now}`; resume with the saved run's settings (only the epochs and the \
                 schedule may change)",
                path.display()
            ),
            ResumeError::Unpaired { dir, reason } => write!(
                f,
                "cannot resume from {}: {MODEL_FILE} and {OPTIMIZER_FILE} are not of one save \
                 (one cut off between the two files, or files of two runs): {reason}",
                dir.display()
            ),
            ResumeError::PastEpochs { done, epochs } => write!(
                f,
                "cannot resume: the saved run trained {done} epochs, more than the {epochs} \
                 asked for; ask for at least {done}"
            ),
        }
    }
}

// The message includes fused-optim's (the command line prints only this one), so no source.
impl std::error::Error for ResumeError {}

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
/// AdamW's 0.01); biases form a second parameter group without. Native only: it blocks on
/// [`train_named_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn train_named(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    optimizer: &str,
    lr: Option<f64>,
) -> Result<Run, Box<dyn std::error::Error>> {
    pollster::block_on(train_named_async(
        gpu,
        data,
        config,
        optimizer,
        lr,
        &mut |_, _| {},
    ))
}

/// A training run's future, its rule's type erased.
type Training<'a> = Pin<Box<dyn Future<Output = Result<Run, Box<dyn std::error::Error>>> + 'a>>;

/// [`train_named`] without blocking, on the web too, calling `on_epoch` as
/// [`train_async`] does.
pub async fn train_named_async(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    optimizer: &str,
    lr: Option<f64>,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<Run, Box<dyn std::error::Error>> {
    struct Find<'a> {
        gpu: &'a GpuContext,
        data: &'a Data,
        config: &'a Config,
        optimizer: &'a str,
        lr: Option<f64>,
        on_epoch: Option<&'a mut dyn FnMut(usize, f64)>,
        run: Option<Training<'a>>,
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
            let set = match self.lr.or(tuned.map(|(_, lr)| *lr)) {
                Some(lr) => rule.set_hyperparameter("lr", lr.into()),
                None => Ok(()),
            };
            let (gpu, data, config) = (self.gpu, self.data, self.config);
            let on_epoch = self.on_epoch.take().expect("variant names are unique");
            self.run = Some(Box::pin(async move {
                set?;
                train_async(gpu, data, config, rule, on_epoch).await
            }));
        }
    }
    let mut find = Find {
        gpu,
        data,
        config,
        optimizer,
        lr,
        on_epoch: Some(on_epoch),
        run: None,
    };
    visit_rules(&mut find);
    match find.run {
        Some(run) => run.await,
        None => Err(format!(
            "unknown optimizer `{optimizer}`; choose from {}",
            optimizers().join(", ")
        )
        .into()),
    }
}

/// The model's tensors and their shapes: `layer{k}.weight` ([inputs][outputs]) and
/// `layer{k}.bias`.
fn shapes(widths: &[usize]) -> Vec<(String, Vec<usize>)> {
    widths
        .windows(2)
        .enumerate()
        .flat_map(|(k, w)| {
            [
                (format!("layer{k}.weight"), vec![w[0], w[1]]),
                (format!("layer{k}.bias"), vec![w[1]]),
            ]
        })
        .collect()
}

/// The model's tensors and their element counts.
fn tensors(widths: &[usize]) -> Vec<(String, usize)> {
    shapes(widths)
        .into_iter()
        .map(|(name, shape)| (name, shape.iter().product()))
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
/// CPU twin from the same initial weights and batch order, and reports both. With
/// `config.resume`, the GPU run continues the saved one and the twin sits out (see
/// [`Run::cpu_loss`]); with `config.save`, the run saves itself after every epoch. Native
/// only: it blocks on [`train_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn train<R: UpdateRule>(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    rule: R,
) -> Result<Run, Box<dyn std::error::Error>> {
    pollster::block_on(train_async(gpu, data, config, rule, &mut |_, _| {}))
}

/// [`train`] without blocking, on the web too, where the GPU's answers arrive through
/// promises; it calls `on_epoch(epoch, loss)` with each epoch's GPU loss (from 0) as it is
/// read back. Saving and resuming need files, so on the web `config.save` and
/// `config.resume` are refused.
pub async fn train_async<R: UpdateRule>(
    gpu: &GpuContext,
    data: &Data,
    config: &Config,
    rule: R,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<Run, Box<dyn std::error::Error>> {
    #[cfg(target_arch = "wasm32")]
    if config.save.is_some() || config.resume.is_some() {
        return Err("saving and resuming need a file system: native only".into());
    }
    config.schedule.validate()?;
    // At least one batch per epoch, so that every epoch has an encoder to checkpoint in.
    let batches = data.train_y.len().checked_div(config.batch).unwrap_or(0);
    if batches == 0 {
        return Err(format!(
            "a batch of {} rows: give 1 to {} (the training rows)",
            config.batch,
            data.train_y.len()
        )
        .into());
    }
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
    // Taken before a restore, which sets the saved run's last scheduled lr.
    let base_lrs: Vec<f64> = set.groups().iter().map(UpdateRule::lr).collect();
    #[cfg(not(target_arch = "wasm32"))]
    let settings = settings(&widths, config, rule.name(), &base_lrs);
    let saved: Option<Saved> = match &config.resume {
        #[cfg(not(target_arch = "wasm32"))]
        Some(dir) => Some(Saved::load(dir, &settings, &widths, config, &mut set)?),
        _ => None,
    };
    #[cfg(not(target_arch = "wasm32"))]
    let mut saver = match &config.save {
        Some(dir) => Some(Saver::new(dir, &settings, &layout, &widths, config)?),
        None => None,
    };
    let initial = initial_params(&layout, &widths, config.seed);
    let first = saved.as_ref().map_or(0, |saved| saved.epochs);
    let mut cpu = saved
        .is_none()
        .then(|| CpuModel::new(&layout, &set, &widths, config.batch, initial.clone()));
    let mut model = GpuModel::new(
        gpu,
        set,
        &widths,
        config.batch,
        data,
        &initial,
        &config.precision,
    )?;
    let (mut gpu_loss, mut cpu_loss) = match &saved {
        Some(saved) => {
            model.write_params(&saved.params);
            (saved.gpu_loss.clone(), saved.cpu_loss.clone())
        }
        None => (Vec::new(), Vec::new()),
    };
    // Epoch e's order is the (e + 1)-th shuffle of the seed's stream, so a resumed run replays
    // the shuffles of the epochs done (microseconds): the order depends on the seed and the
    // epoch alone, and is the one runs had before resuming existed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let mut shuffled = || {
        let mut order: Vec<usize> = (0..data.train_y.len()).collect();
        order.shuffle(&mut rng);
        order
    };
    for _ in 0..first {
        shuffled();
    }
    let mut guard_status = Vec::new();
    for epoch in first..config.epochs {
        for (group, base) in base_lrs.iter().enumerate() {
            let lr = config.schedule.lr(*base, epoch as u64);
            model.set.set_group_lr(group, lr)?;
            if let Some(cpu) = &mut cpu {
                cpu.set_group_lr(group, lr)?;
            }
        }
        // The epoch's batch order, the same for both; a short last batch is dropped.
        let order = shuffled();
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
        let (loss, pending) = model.epoch(&x, &y, config.save.is_some()).await?;
        gpu_loss.push(loss);
        on_epoch(epoch, loss);
        if let Some(cpu) = &mut cpu {
            cpu_loss.push(cpu.epoch(&x, &y)?);
        }
        // The epoch's losses were just read back, so this waits for nothing more.
        guard_status.extend(model.set.read_grad_status_async().await?);
        #[cfg(not(target_arch = "wasm32"))]
        if let (Some(saver), Some(pending)) = (&mut saver, pending) {
            // The params as the checkpoint's copies saw them: nothing was submitted since.
            let params = model.read_params().await?;
            let history = (gpu_loss.as_slice(), cpu_loss.as_slice());
            saver.save(pending, &params, model.set.step_count(), history)?;
        }
        #[cfg(target_arch = "wasm32")]
        drop(pending);
    }
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(saver) = saver {
        saver.finish()?;
    }
    let gpu_logits = model.predict(&data.test_x, data.test_y.len()).await?;
    let cpu_logits = cpu.map(|cpu| cpu.predict(&data.test_x, data.test_y.len()));
    let cpu_logits = cpu_logits.as_deref();
    Ok(Run {
        optimizer: rule.name(),
        parameters: tensors.iter().map(|(_, len)| len).sum(),
        gpu_loss,
        cpu_loss,
        gpu_accuracy: accuracy(&gpu_logits, &data.test_y, data.classes),
        cpu_accuracy: cpu_logits.map(|logits| accuracy(logits, &data.test_y, data.classes)),
        gpu_test_loss: cross_entropy(&gpu_logits, &data.test_y, data.classes),
        cpu_test_loss: cpu_logits.map(|logits| cross_entropy(logits, &data.test_y, data.classes)),
        guard_status,
        resumed: saved.map(|saved| Resumed {
            epochs: saved.epochs,
            schedule: saved.schedule,
        }),
    })
}

/// The settings a run must resume with, by model-file metadata key: everything that shapes
/// the run but the epochs and the schedule. Floats in Rust's shortest exact form.
#[cfg(not(target_arch = "wasm32"))]
fn settings(
    widths: &[usize],
    config: &Config,
    optimizer: &str,
    base_lrs: &[f64],
) -> Vec<(&'static str, String)> {
    let list = |items: Vec<String>| items.join(",");
    vec![
        ("train_mlp.optimizer", optimizer.to_owned()),
        (
            "train_mlp.lr",
            list(base_lrs.iter().map(|lr| format!("{lr:?}")).collect()),
        ),
        (
            "train_mlp.widths",
            list(widths.iter().map(usize::to_string).collect()),
        ),
        ("train_mlp.batch", config.batch.to_string()),
        ("train_mlp.seed", config.seed.to_string()),
        ("train_mlp.precision", config.precision.to_string()),
        ("train_mlp.guard", format!("{:?}", config.guard)),
    ]
}

/// The checkpoint container's element type for params stored as `dtype`.
#[cfg(not(target_arch = "wasm32"))]
fn file_dtype(dtype: Dtype) -> TensorDtype {
    match dtype {
        Dtype::F32 => TensorDtype::F32,
        Dtype::Bf16 => TensorDtype::Bf16,
        Dtype::F16 => TensorDtype::F16,
    }
}

/// The optimizer file's metadata key holding [`fingerprint`] of the model file saved with it.
#[cfg(not(target_arch = "wasm32"))]
const PAIRING_KEY: &str = "train_mlp.params_fnv1a";

/// FNV-1a (64 bits) of the model file's tensors' bytes in name order, in hex: binds an
/// optimizer file to the params it was saved with, which its own step count cannot (two runs
/// of one length have the same).
#[cfg(not(target_arch = "wasm32"))]
fn fingerprint(model: &Checkpoint) -> String {
    let hash = (model.tensors.values())
        .flat_map(|tensor| &tensor.data)
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Losses in metadata: Rust's shortest exact form, comma separated.
#[cfg(not(target_arch = "wasm32"))]
fn loss_text(losses: &[f64]) -> String {
    losses
        .iter()
        .map(|loss| format!("{loss:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A saved run, read back and checked against this one, its optimizer state restored.
// On the web a run never resumes (there are no files): never made there.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
struct Saved {
    epochs: usize,
    /// The packed params in their storage format (zero between tensors, as a fresh run's).
    params: Vec<u8>,
    gpu_loss: Vec<f64>,
    cpu_loss: Vec<f64>,
    schedule: String,
}

#[cfg(not(target_arch = "wasm32"))]
impl Saved {
    /// Reads `dir`'s two files, checks them against this run (`settings`, `widths`,
    /// `config`), and restores the optimizer's checkpoint into `set`. On error `set` is
    /// unchanged.
    fn load<R: UpdateRule>(
        dir: &Path,
        settings: &[(&'static str, String)],
        widths: &[usize],
        config: &Config,
        set: &mut ParamSet<R>,
    ) -> Result<Self, ResumeError> {
        let path = dir.join(MODEL_FILE);
        let file = |source| ResumeError::File {
            path: path.clone(),
            source,
        };
        let model = Checkpoint::load(&path).map_err(file)?;
        let corrupt = |reason: String| ResumeError::Corrupt {
            path: path.clone(),
            reason,
        };
        let meta = |key: &str| model.meta(key).map_err(file);
        for (key, now) in settings {
            let saved = meta(key)?;
            if saved != now {
                return Err(ResumeError::Mismatch {
                    path: path.clone(),
                    setting: key.trim_start_matches("train_mlp."),
                    saved: saved.to_owned(),
                    now: now.clone(),
                });
            }
        }
        let epochs: usize = meta("train_mlp.epochs")?
            .parse()
            .map_err(|_| corrupt("`train_mlp.epochs` is not a count".into()))?;
        if epochs > config.epochs {
            return Err(ResumeError::PastEpochs {
                done: epochs,
                epochs: config.epochs,
            });
        }
        let losses = |key: &str| -> Result<Vec<f64>, ResumeError> {
            let text = meta(key)?;
            let losses = text
                .split(',')
                .filter(|loss| !loss.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<f64>, _>>()
                .map_err(|_| corrupt(format!("`{key}` is not a list of losses")))?;
            match losses.len() <= epochs {
                true => Ok(losses),
                false => Err(corrupt(format!("`{key}` lists more losses than epochs"))),
            }
        };
        let (gpu_loss, cpu_loss) = (losses("train_mlp.gpu_loss")?, losses("train_mlp.cpu_loss")?);
        if gpu_loss.len() != epochs {
            return Err(corrupt("`train_mlp.gpu_loss` lacks epochs".into()));
        }
        let schedule = meta("train_mlp.schedule")?.to_owned();
        let model_steps = meta("train_mlp.steps")?.to_owned();
        let layout = set.layout();
        let dtype = config.precision.params;
        let element = dtype.element_bytes() as usize;
        let mut params = vec![0; dtype.buffer_bytes(layout.len()) as usize];
        let shapes = shapes(widths);
        if let Some(name) =
            (model.tensors.keys()).find(|name| !shapes.iter().any(|(n, _)| n == *name))
        {
            return Err(corrupt(format!(
                "it holds a tensor `{name}` this model lacks"
            )));
        }
        for (name, shape) in &shapes {
            let data = model.tensor(name, file_dtype(dtype), shape).map_err(file)?;
            let range = layout.tensor(name).expect("registered").range();
            params[range.start * element..range.end * element].copy_from_slice(data);
        }
        let path = dir.join(OPTIMIZER_FILE);
        let file = |source| ResumeError::File {
            path: path.clone(),
            source,
        };
        let optimizer = Checkpoint::load(&path).map_err(file)?;
        let unpaired = |reason: String| ResumeError::Unpaired {
            dir: dir.to_owned(),
            reason,
        };
        let optimizer_steps = optimizer.metadata.get("fused_optim.steps");
        if optimizer_steps != Some(&model_steps) {
            let optimizer_steps = optimizer_steps.map_or("?", String::as_str);
            return Err(unpaired(format!(
                "the model was saved after {model_steps} steps, the optimizer after \
                 {optimizer_steps}"
            )));
        }
        if optimizer.metadata.get(PAIRING_KEY) != Some(&fingerprint(&model)) {
            return Err(unpaired(
                "the optimizer was saved with other params than the model file holds".into(),
            ));
        }
        set.restore(&optimizer).map_err(file)?;
        Ok(Self {
            epochs,
            params,
            gpu_loss,
            cpu_loss,
            schedule,
        })
    }
}

/// Saves a run after each epoch: builds the model file and hands both files to a writer
/// thread, so the disk's fsyncs overlap the next epoch; each save waits for the last one.
#[cfg(not(target_arch = "wasm32"))]
struct Saver {
    dir: PathBuf,
    /// The model file's metadata every save shares.
    metadata: BTreeMap<String, String>,
    /// Each tensor's name, shape and elements in the packed params.
    tensors: Vec<(String, Vec<usize>, std::ops::Range<usize>)>,
    dtype: Dtype,
    writing: Option<std::thread::JoinHandle<fused_optim::Result<()>>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl Saver {
    fn new(
        dir: &Path,
        settings: &[(&'static str, String)],
        layout: &ParamLayout,
        widths: &[usize],
        config: &Config,
    ) -> fused_optim::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|error| fused_optim::Error::Io {
            path: dir.display().to_string(),
            reason: error.to_string(),
        })?;
        let mut metadata: BTreeMap<String, String> = settings
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect();
        metadata.insert(VERSION_KEY.into(), FORMAT_VERSION.to_string());
        metadata.insert(
            "train_mlp.schedule".into(),
            format!("{:?}", config.schedule),
        );
        let tensors = shapes(widths)
            .into_iter()
            .map(|(name, shape)| {
                let range = layout.tensor(&name).expect("registered").range();
                (name, shape, range)
            })
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            metadata,
            tensors,
            dtype: config.precision.params,
            writing: None,
        })
    }

    /// Saves the epoch just trained: `pending`, the optimizer's checkpoint recorded into its
    /// last encoder, `params` (packed, in their storage format), the optimizer's `steps` and
    /// the (GPU, CPU) loss history. Returns once the previous save is written.
    fn save(
        &mut self,
        pending: PendingCheckpoint,
        params: &[u8],
        steps: u64,
        (gpu_loss, cpu_loss): (&[f64], &[f64]),
    ) -> fused_optim::Result<()> {
        let element = self.dtype.element_bytes() as usize;
        let mut model = Checkpoint {
            tensors: BTreeMap::new(),
            metadata: self.metadata.clone(),
        };
        for (name, shape, range) in &self.tensors {
            let data = params[range.start * element..range.end * element].to_vec();
            let tensor = HostTensor {
                dtype: file_dtype(self.dtype),
                shape: shape.clone(),
                data,
            };
            model.tensors.insert(name.clone(), tensor);
        }
        let metadata = [
            ("train_mlp.epochs", gpu_loss.len().to_string()),
            ("train_mlp.steps", steps.to_string()),
            ("train_mlp.gpu_loss", loss_text(gpu_loss)),
            ("train_mlp.cpu_loss", loss_text(cpu_loss)),
        ];
        for (key, value) in metadata {
            model.metadata.insert(key.into(), value);
        }
        let pairing = fingerprint(&model);
        self.wait()?;
        let (optimizer_path, model_path) =
            (self.dir.join(OPTIMIZER_FILE), self.dir.join(MODEL_FILE));
        // A save cut off between the two files leaves an unpaired optimizer file, which
        // resuming refuses (ResumeError::Unpaired) rather than mixing two epochs.
        self.writing = Some(std::thread::spawn(move || {
            let mut optimizer = pending.wait()?;
            optimizer.metadata.insert(PAIRING_KEY.into(), pairing);
            optimizer.save(optimizer_path)?;
            model.save(model_path)
        }));
        Ok(())
    }

    /// Waits for the save being written, if any.
    fn wait(&mut self) -> fused_optim::Result<()> {
        match self.writing.take() {
            Some(writing) => writing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Ok(()),
        }
    }

    /// Waits for the last save.
    fn finish(mut self) -> fused_optim::Result<()> {
        self.wait()
    }
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
            source: wgpu::ShaderSource::Wgsl(
                format!("{}\n{CONVERT}", fused_optim::tooling::CODEC).into(),
            ),
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
    /// losses, once, at the end. Returns the mean loss and, with `checkpoint`, the optimizer's
    /// checkpoint recorded into the last batch's encoder, after its step.
    async fn epoch(
        &mut self,
        x: &[f32],
        y: &[u32],
        checkpoint: bool,
    ) -> fused_optim::Result<(f64, Option<PendingCheckpoint>)> {
        let (gpu, features) = (self.gpu.clone(), self.widths[0] as u64);
        gpu.queue()
            .write_buffer(&self.epoch_x, 0, bytemuck::cast_slice(x));
        gpu.queue()
            .write_buffer(&self.epoch_y, 0, bytemuck::cast_slice(y));
        let rows = self.batch as u64;
        let (batches, mut pending) = (y.len() as u64 / rows, None);
        for b in 0..batches {
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
            if checkpoint && b + 1 == batches {
                // Copies on the GPU, in order after the step: no wait here.
                pending = Some(self.set.record_checkpoint(&mut encoder)?);
            }
            gpu.queue().submit([encoder.finish()]);
        }
        let losses = gpu
            .download_range_async(&self.epoch_loss, 0..y.len() as u64)
            .await?;
        let loss = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
        Ok((loss, pending))
    }

    /// The buffer the optimizer steps: the params in their storage format.
    fn stored_params(&self) -> &wgpu::Buffer {
        self.stored.params.as_ref().unwrap_or(&self.params)
    }

    /// Replaces the params with `bytes`, packed in their storage format (16-bit params are
    /// decoded into the f32 ones before every forward pass).
    fn write_params(&self, bytes: &[u8]) {
        self.gpu
            .queue()
            .write_buffer(self.stored_params(), 0, bytes);
    }

    /// The params, packed in their storage format. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    async fn read_params(&self) -> fused_optim::Result<Vec<u8>> {
        self.gpu.download_bytes_async(self.stored_params()).await
    }

    /// Logits of `rows` rows of `x`, forward only, in batches.
    async fn predict(&self, x: &[f32], rows: usize) -> fused_optim::Result<Vec<f32>> {
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
        gpu.download_range_async(&self.test_logits, 0..rows as u64 * classes)
            .await
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
