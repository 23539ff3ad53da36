//! `fused-optim`: inspect adapters and benchmark the fused update rules on one of them.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fused_optim::Precision;
use fused_optim::{AdapterChoice, GpuContext, StepValues};
use fused_optim_bench::measure::{self as bench, Repetitions, Variant};
use fused_optim_bench::report::{self, size_label, Report, Setup};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(version, about = "Fused GPU optimizer steps in WGSL on wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct AdapterArgs {
    /// Backends to consider, e.g. `vulkan` or `metal,dx12` (default: $WGPU_BACKEND, else all).
    #[arg(long)]
    backend: Option<String>,
    /// Use the first adapter whose name contains this (default: $WGPU_ADAPTER_NAME, else the
    /// high-performance default).
    #[arg(long)]
    adapter: Option<String>,
}

impl AdapterArgs {
    fn choice(&self) -> AdapterChoice {
        let mut choice = AdapterChoice::from_env();
        if let Some(backend) = &self.backend {
            choice.backends = wgpu::Backends::from_comma_list(backend);
        }
        if let Some(name) = &self.adapter {
            choice.name = Some(name.clone());
        }
        choice
    }
}

#[derive(Subcommand)]
enum Command {
    /// List adapters and backends, and the limits that matter for optimizer steps.
    Info(AdapterArgs),
    /// Time every update rule and variant at several sizes on one adapter, beside the roofline,
    /// the unfused chain and the CPU twin.
    Bench {
        #[command(flatten)]
        adapter: AdapterArgs,
        #[command(flatten)]
        options: BenchOptions,
    },
    /// Read and convert optimizer checkpoints (safetensors files written by `save`).
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Print a checkpoint's rule, groups, hyperparameters, formats, tensors and sizes.
    Inspect {
        /// The checkpoint file.
        file: PathBuf,
    },
    /// Write a copy with 8-bit and bf16 state widened to f32 (for export, or to resume with
    /// f32 state).
    Expand {
        /// The checkpoint file.
        file: PathBuf,
        /// Where to write the expanded copy.
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct BenchOptions {
    /// Parameter counts to sweep, comma separated (K and M are binary multiples).
    #[arg(long, value_delimiter = ',', default_value = "1M,4M,16M,64M", value_parser = parse_size)]
    sizes: Vec<usize>,
    /// Rules to run, comma separated, by the names in the table (default: all).
    #[arg(long, value_delimiter = ',')]
    rules: Vec<String>,
    /// Storage formats to measure, repeatable, each in `Precision`'s short form
    /// (`bf16,master=remainder,state=8bit`, ...), or `all` for every preset.
    #[arg(long, default_value = "f32")]
    precision: Vec<String>,
    /// Grad guards to measure under, comma separated: `none`, `scale` (GradScaler's defaults),
    /// `clip` (clip_grad_norm_ to 1.0), `scale+clip`.
    #[arg(long, value_delimiter = ',', default_value = "none", value_parser = bench::Guard::parse)]
    guard: Vec<bench::Guard>,
    /// Timed steps per kernel, after the warm-up: the samples of the median and spread.
    #[arg(long, default_value_t = 10)]
    steps: u32,
    /// Untimed steps per kernel before timing.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Steps of the CPU twin per row (it runs on one core; 0 skips it).
    #[arg(long, default_value_t = 1)]
    cpu_steps: u32,
    /// Also time the step of the first of this many shards of each row's parameters
    /// (`ParamSet::shard`, no guard): the `shard ms` and `x whole` columns.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write one CSV record per row.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also plot effective GB/s against size per rule, with the rooflines, as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also time, at each size, a hand-written vec4 Adam and a hand-written vec4 kernel moving
    /// Adam's bytes with no arithmetic (raw wgpu, outside fused-optim's engine).
    #[arg(long)]
    hand_written: bool,
    /// How the kernels get their per-dispatch values (default: immediates where the adapter
    /// has them).
    #[arg(long, value_enum)]
    step_values: Option<StepValuesArg>,
}

/// `--step-values`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StepValuesArg {
    Immediates,
    UniformCopy,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Info(adapter) => info(&adapter.choice()).map_err(Into::into),
        Command::Bench { adapter, options } => bench(&adapter.choice(), &options),
        Command::Checkpoint {
            action: CheckpointAction::Inspect { file },
        } => inspect(&file),
        Command::Checkpoint {
            action: CheckpointAction::Expand { file, output },
        } => fused_optim::Checkpoint::load(&file)
            .and_then(|checkpoint| checkpoint.expanded()?.save(&output))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `checkpoint inspect FILE`.
fn inspect(file: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let checkpoint = fused_optim::Checkpoint::from_bytes(&bytes)?;
    print!("{}", report::checkpoint_summary(&checkpoint, bytes.len()));
    Ok(())
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}; driver {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

fn info(choice: &AdapterChoice) -> fused_optim::Result<()> {
    println!("adapters on {:?}:", choice.backends);
    for adapter in fused_optim::enumerate_adapters(choice.backends) {
        println!("  {}", describe(&adapter.get_info()));
    }
    let gpu = GpuContext::open(choice)?;
    let limits = gpu.limits();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!("\nselected: {}", describe(gpu.adapter_info()));
    println!(
        "  max_storage_buffer_binding_size     {:>14} B ({:.0} MiB, {} f32)",
        limits.max_storage_buffer_binding_size,
        mib(limits.max_storage_buffer_binding_size),
        limits.max_storage_buffer_binding_size / 4
    );
    println!(
        "  max_buffer_size                     {:>14} B ({:.0} MiB)",
        limits.max_buffer_size,
        mib(limits.max_buffer_size)
    );
    for (name, value) in [
        (
            "max_compute_workgroups_per_dimension",
            limits.max_compute_workgroups_per_dimension,
        ),
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
        ),
        (
            "min_storage_buffer_offset_alignment",
            limits.min_storage_buffer_offset_alignment,
        ),
        (
            "min_uniform_buffer_offset_alignment",
            limits.min_uniform_buffer_offset_alignment,
        ),
    ] {
        println!("  {name:<36}{value:>14}");
    }
    let window = gpu.dispatch_limits().window_elements;
    println!(
        "  fused-optim window (one dispatch)   {:>14} f32 ({:.0} MiB)",
        window,
        mib(window * 4)
    );
    let timestamps = gpu
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    println!("  timestamp queries                   {timestamps:>14}");
    let values = match gpu.step_values_for(fused_optim::tooling::MAX_STEP_VALUES_BYTES) {
        StepValues::Immediates => format!(
            "immediates (max {} B)",
            gpu.device().limits().max_immediate_size
        ),
        StepValues::UniformCopy => "uniform copied in per step".to_owned(),
    };
    println!("  per-dispatch values      {values:>25}");
    Ok(())
}

fn bench(choice: &AdapterChoice, options: &BenchOptions) -> Result<(), Box<dyn std::error::Error>> {
    let mut gpu = GpuContext::open(choice)?;
    if let Some(values) = options.step_values {
        gpu = gpu.with_step_values(match values {
            StepValuesArg::Immediates => StepValues::Immediates,
            StepValuesArg::UniformCopy => StepValues::UniformCopy,
        })?;
    }
    let repetitions = Repetitions {
        warmup: options.warmup,
        steps: options.steps,
        cpu_steps: options.cpu_steps,
        shards: options.shards,
    };
    let setup = Setup::new(&gpu, options.warmup, options.steps, options.cpu_steps);
    println!("{}", setup.header());
    let variants: Vec<Variant> = Variant::all()
        .into_iter()
        .filter(|v| options.rules.is_empty() || options.rules.iter().any(|r| r == v.name()))
        .collect();
    if variants.is_empty() {
        let names: Vec<&str> = Variant::all().iter().map(Variant::name).collect();
        return Err(format!("no rule matches --rules; choose from {}", names.join(", ")).into());
    }
    let mut precisions = Vec::new();
    for text in &options.precision {
        match text.as_str() {
            "all" => precisions.extend(Precision::presets().into_iter().map(|(_, p)| p)),
            text => precisions.push(text.parse::<Precision>()?),
        }
    }
    for precision in &precisions {
        // Combinations that mean nothing for any rule fail here; a per-slot override that
        // only some rules have skips the others below.
        let any_rule = Precision {
            state_overrides: Vec::new(),
            ..precision.clone()
        };
        any_rule.validate(&[])?;
    }
    let mut skipped = Vec::new();
    let sizes: Vec<usize> = options
        .sizes
        .iter()
        .copied()
        .filter(|&len| match bench::unfit(&gpu, len) {
            Some(reason) => {
                skipped.push(format!("{}: {reason}", size_label(len)));
                false
            }
            None => true,
        })
        .collect();
    let setups: Vec<(&Precision, &bench::Guard)> = precisions
        .iter()
        .flat_map(|precision| options.guard.iter().map(move |guard| (precision, guard)))
        .collect();
    let progress = ProgressBar::new((variants.len() * sizes.len() * setups.len()) as u64)
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
                .expect("a valid progress template"),
        );
    let mut rows = Vec::new();
    let mut hand_written = Vec::new();
    for &len in &sizes {
        // A kernel too large for this adapter, or a precision overriding a state slot the rule
        // lacks, is skipped with a note; anything else fails.
        let mut skip = |what: &str, error: fused_optim::Error| match error {
            fused_optim::Error::OutOfMemory { .. }
            | fused_optim::Error::BufferTooLarge { .. }
            | fused_optim::Error::Unsupported { .. }
            | fused_optim::Error::InvalidPrecision { .. } => {
                skipped.push(format!("{what} at {}: {error}", size_label(len)));
                Ok(())
            }
            error => Err(error),
        };
        if options.hand_written {
            progress.set_message(format!("hand-written kernels at {}", size_label(len)));
            match bench::measure_hand_written(&gpu, len, repetitions) {
                Ok(row) => hand_written.push(row),
                Err(error) => skip("the hand-written kernels", error)?,
            }
        }
        let copy = bench::copy_bandwidth(&gpu, bench::copy_bytes(len))?;
        for variant in &variants {
            for &(precision, guard) in &setups {
                let what = format!("{} [{precision}, guard {}]", variant.name(), guard.name);
                progress.set_message(format!("{what} at {}", size_label(len)));
                match variant.measure(&gpu, len, repetitions, copy, (precision, guard)) {
                    Ok(row) => rows.push(row),
                    Err(error) => skip(&what, error)?,
                }
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    rows.sort_by_key(|m| {
        (
            Variant::all().iter().position(|v| v.name() == m.rule),
            m.params,
            setups
                .iter()
                .position(|(p, g)| p.to_string() == m.precision && g.name == m.guard),
        )
    });
    println!(
        "roofline: the same bytes moved with no update arithmetic, in the same formats and \
         under the same grad guard; floor: the same bytes moved by the f32 roofline, plain vec4 \
         loads and stores with no decoding (a compact format's codec counts against it); unfused: one kernel per elementwise \
         operation; cpu: the CPU twin on one core (both f32 without a guard only); B/p: bytes \
         per parameter moved per step and stored\n"
    );
    print!("{}", report::table(&rows));
    if !hand_written.is_empty() {
        println!(
            "\nhand-written vec4 kernels (raw wgpu, one dispatch): Adam, and Adam's bytes moved \
             with no arithmetic"
        );
        print!("{}", report::hand_written_table(&hand_written));
    }
    for note in &skipped {
        println!("skipped {note}");
    }
    let report = Report {
        setup,
        rows,
        hand_written,
        skipped,
    };
    if let Some(path) = &options.json {
        report::write_json(&report, path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &options.csv {
        report::write_csv(&report, path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &options.plot {
        report::write_svg(&report, path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Parses a parameter count: `1048576`, `64K`, `16M` (binary multiples).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, scale) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1 << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    match digits.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * scale),
        _ => Err(format!(
            "`{text}` is not a parameter count like 1000000, 64K or 16M"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }
}
