//! Trains a multilayer perceptron on the red wine quality data set entirely on the GPU: the
//! forward pass, the loss, the backward pass and fused-optim's step are recorded into one
//! command encoder per batch, and only the epoch's losses are read back. A CPU twin trains the
//! same model from the same weights in the same batch order, and the two loss curves are
//! printed side by side.
//!
//! cargo run --release --example train_mlp -- --optimizer adam --schedule cosine --epochs 20
//! cargo run --release --example train_mlp -- --large --epochs 3 --plot loss.svg
//! cargo run --release --example train_mlp -- --precision bf16,master=remainder,state=8bit
//! cargo run --release --example train_mlp -- --precision f16 --loss-scale dynamic
//!
//! With `--precision` other than f32 the GPU run stores params, grads, master and state in
//! those formats while the CPU twin stays in f32, so the two columns are the low-precision run
//! and the f32 run, and the closing lines compare their test losses. With `--loss-scale
//! dynamic` (or `--clip-norm`) the GPU run's optimizer keeps a loss scale on the device that
//! the backward pass multiplies the loss gradient by; each epoch's line adds the scale, the
//! steps skipped so far and the last step's grad norm.
//!
//! With `--save DIR` the run saves itself into DIR after every epoch (the optimizer's
//! checkpoint and the model, see train_mlp::MODEL_FILE); `--resume DIR` continues it from its
//! next epoch up to `--epochs`, on the GPU bit for bit as the uninterrupted run:
//!
//! cargo run --release --example train_mlp -- --epochs 20 --save ck   # stopped after epoch 7
//! cargo run --release --example train_mlp -- --epochs 20 --save ck --resume ck
//!
//! Resuming with more `--epochs` than the saved run had extends it; the cosine schedule spans
//! `--epochs`, so its curve then changes from the resumed epoch on (constant, step and
//! exponential do not depend on the run's length). The CPU twin keeps its optimizer state on
//! the host and cannot resume from the GPU optimizer's checkpoint, so a resumed run shows the
//! twin's losses up to the first resume and none after.

use std::process::ExitCode;

use clap::Parser;
use fused_optim::{GpuContext, LrSchedule};
use plotters::prelude::*;
use train_mlp as mlp;

#[derive(Parser)]
struct Args {
    /// Any variant of any registered rule, as the benchmark names them (adam, adamw,
    /// sgd-momentum, rmsprop, adagrad, nadam, lion, ...).
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate (default: one tuned for this model, else the rule's PyTorch default).
    #[arg(long)]
    lr: Option<f64>,
    /// constant, step (x0.5 every 10 epochs), exponential (x0.9 per epoch) or cosine (to 0
    /// over the run).
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Epochs of linear warm-up from a tenth of the lr before the schedule.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Two hidden layers of 1024: over a million parameters.
    #[arg(long)]
    large: bool,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Storage formats of the GPU run (`f32`, `bf16,master=remainder,state=8bit`, ...; see
    /// fused_optim::Precision). The CPU twin, the f32 reference, stays f32.
    #[arg(long, default_value = "f32")]
    precision: fused_optim::Precision,
    /// `dynamic`: torch.amp.GradScaler's loss scaling on the device (the loss gradient times
    /// the scale, the step unscaling and skipping on inf/NaN), for f16 params and grads.
    #[arg(long, default_value = "none")]
    loss_scale: String,
    /// Clip the global L2 norm of the (unscaled) grads to this, clip_grad_norm_'s max_norm.
    #[arg(long)]
    clip_norm: Option<f32>,
    /// Write the GPU and CPU loss curves to this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Save the run into this directory after every epoch (created if missing):
    /// optimizer.safetensors (the optimizer's checkpoint) and model.safetensors (the params,
    /// one tensor per layer, and what resuming needs), each replaced crash-safely.
    #[arg(long, value_name = "DIR")]
    save: Option<std::path::PathBuf>,
    /// Continue the run saved in this directory from its next epoch up to --epochs. The model
    /// and optimizer settings must be the saved run's; --schedule and --warmup may differ.
    #[arg(long, value_name = "DIR")]
    resume: Option<std::path::PathBuf>,
}

/// Errors print as their messages (`main` returning them would print their Debug form).
fn main() -> ExitCode {
    match train(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn train(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let epochs = args.epochs as u64;
    let mut schedule = match args.schedule.as_str() {
        "constant" => LrSchedule::Constant,
        "step" => LrSchedule::Step {
            step_size: 10,
            gamma: 0.5,
        },
        "exponential" => LrSchedule::Exponential { gamma: 0.9 },
        "cosine" => LrSchedule::Cosine {
            t_max: epochs.saturating_sub(args.warmup).max(1),
            eta_min: 0.0,
        },
        other => return Err(format!("unknown schedule `{other}`").into()),
    };
    if args.warmup > 0 {
        schedule = schedule.after_warmup(args.warmup, 0.1);
    }
    let hidden = if args.large {
        vec![1024, 1024]
    } else {
        vec![64, 64]
    };
    let scaler = match args.loss_scale.as_str() {
        "none" => None,
        "dynamic" => Some(fused_optim::GradScaler::default()),
        other => return Err(format!("unknown --loss-scale `{other}`: none or dynamic").into()),
    };
    let mut guard = fused_optim::GradGuard::new();
    guard.scaler = scaler;
    guard.clip_norm = args.clip_norm.map(fused_optim::ClipGradNorm::new);
    let guard = (scaler.is_some() || args.clip_norm.is_some()).then_some(guard);
    let config = mlp::Config {
        hidden,
        batch: args.batch,
        epochs: args.epochs,
        seed: args.seed,
        schedule,
        precision: args.precision.clone(),
        guard,
        save: args.save.clone(),
        resume: args.resume.clone(),
    };
    let gpu = GpuContext::new()?;
    let data = mlp::wine_quality(args.seed);
    println!(
        "adapter: {}\nwine quality: {} train / {} test rows, {} features, {} classes; hidden {:?}",
        gpu.adapter_info().name,
        data.train_y.len(),
        data.test_y.len(),
        data.features,
        data.classes,
        config.hidden
    );
    let run = mlp::train_named(&gpu, &data, &config, &args.optimizer, args.lr)?;
    let twin = match run.resumed {
        None => "cpu twin in f32",
        Some(_) => "no cpu twin after resuming",
    };
    println!(
        "{} on {} parameters, schedule {:?}, gpu in {}, {twin}",
        run.optimizer, run.parameters, config.schedule, config.precision
    );
    let first = run.resumed.as_ref().map_or(0, |resumed| resumed.epochs);
    if let (Some(dir), Some(resumed)) = (&args.resume, &run.resumed) {
        println!(
            "resumed from {} after epoch {first} (earlier losses are the saved run's); the CPU \
             twin cannot resume, so its column stops at epoch {}",
            dir.display(),
            run.cpu_loss.len()
        );
        if resumed.schedule != format!("{:?}", config.schedule) {
            println!(
                "note: the saved run's schedule was {}; from epoch {} this run's applies",
                resumed.schedule,
                first + 1
            );
        }
    }
    let guarded = !run.guard_status.is_empty();
    print!(
        "{:>5} {:>12} {:>12} {:>10}",
        "epoch", "gpu loss", "cpu loss", "rel diff"
    );
    if guarded {
        print!(" {:>10} {:>8} {:>10}", "scale", "skipped", "last norm");
    }
    println!();
    for (epoch, g) in run.gpu_loss.iter().enumerate() {
        print!("{:>5} {g:>12.6}", epoch + 1);
        match run.cpu_loss.get(epoch) {
            Some(c) => print!(" {c:>12.6} {:>10.1e}", (g - c).abs() / c.abs()),
            None => print!(" {:>12} {:>10}", "-", "-"),
        }
        let status = epoch
            .checked_sub(first)
            .and_then(|e| run.guard_status.get(e));
        if let Some(status) = status {
            print!(
                " {:>10} {:>8} {:>10.4}",
                status.scale, status.skipped, status.total_norm
            );
        }
        println!();
    }
    match (run.cpu_accuracy, run.cpu_test_loss) {
        (Some(cpu_accuracy), Some(cpu_test_loss)) => {
            println!(
                "test accuracy: gpu {:.1}%, cpu {:.1}%",
                100.0 * run.gpu_accuracy,
                100.0 * cpu_accuracy
            );
            println!(
                "test loss: gpu ({}) {:.6}, cpu twin (f32) {:.6}, relative difference {:.2}%",
                config.precision,
                run.gpu_test_loss,
                cpu_test_loss,
                100.0 * (run.gpu_test_loss - cpu_test_loss).abs() / cpu_test_loss
            );
        }
        _ => {
            println!(
                "test accuracy: gpu {:.1}% (no CPU twin in a resumed run)",
                100.0 * run.gpu_accuracy
            );
            println!(
                "test loss: gpu ({}) {:.6}",
                config.precision, run.gpu_test_loss
            );
        }
    }
    if let Some(dir) = args.save.as_ref().filter(|_| run.gpu_loss.len() > first) {
        println!(
            "saved after epoch {} in {}: {} and {}",
            run.gpu_loss.len(),
            dir.display(),
            mlp::OPTIMIZER_FILE,
            mlp::MODEL_FILE
        );
    }
    if let Some(path) = &args.plot {
        plot(&run, path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Training loss per epoch, GPU solid and CPU twin dashed.
fn plot(run: &mlp::Run, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let top = run
        .gpu_loss
        .iter()
        .chain(&run.cpu_loss)
        .fold(0.0f64, |m, &l| m.max(l))
        * 1.1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: training loss, GPU (solid) and CPU twin (dashed)",
                run.optimizer
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(1.0..run.gpu_loss.len().max(2) as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("mean cross-entropy")
        .draw()?;
    let points = |losses: &[f64]| {
        losses
            .iter()
            .enumerate()
            .map(|(e, &l)| (e as f64 + 1.0, l))
            .collect::<Vec<_>>()
    };
    chart.draw_series(LineSeries::new(points(&run.gpu_loss), BLUE.stroke_width(2)))?;
    chart.draw_series(DashedLineSeries::new(
        points(&run.cpu_loss),
        6,
        4,
        RED.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}
