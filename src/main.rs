//! `fused-optim`: inspect adapters and benchmark the fused update rules on one of them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fused_optim::bench::{copy_bandwidth, measure, Measurement, Repetitions};
use fused_optim::{Adagrad, Adam, AdapterChoice, GpuContext, RmsProp, Sgd};

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
    /// Time every update rule on one adapter: ms per step and effective GB/s.
    Bench {
        #[command(flatten)]
        adapter: AdapterArgs,
        /// Parameters per tensor.
        #[arg(long, default_value_t = 16 << 20)]
        size: usize,
        /// Timed steps per rule, after the warm-up.
        #[arg(long, default_value_t = 10)]
        steps: u32,
        /// Untimed steps per rule before timing.
        #[arg(long, default_value_t = 2)]
        warmup: u32,
        /// Steps of the CPU twin per rule (slow: it runs on one core).
        #[arg(long, default_value_t = 2)]
        cpu_steps: u32,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Info(adapter) => info(&adapter.choice()),
        Command::Bench {
            adapter,
            size,
            steps,
            warmup,
            cpu_steps,
        } => bench(&adapter.choice(), size, warmup, steps, cpu_steps),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
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
    Ok(())
}

fn bench(
    choice: &AdapterChoice,
    size: usize,
    warmup: u32,
    steps: u32,
    cpu_steps: u32,
) -> fused_optim::Result<()> {
    let gpu = GpuContext::open(choice)?;
    let buffer_bytes = size as u64 * 4;
    println!("adapter: {}", describe(gpu.adapter_info()));
    println!(
        "{size} parameters ({:.1} MiB per buffer); {warmup} warm-up + {steps} timed steps per \
         kernel, wall clock around submit + wait; {cpu_steps} CPU twin steps",
        buffer_bytes as f64 / (1 << 20) as f64
    );
    let copy = copy_bandwidth(&gpu, buffer_bytes, steps)?;
    println!("copy_buffer_to_buffer bandwidth: {copy:.2} GB/s (read + write)");
    println!(
        "roofline: a kernel moving the same bytes with no update arithmetic; cpu: the CPU twin\n"
    );
    println!(
        "{:<16}{:>10}{:>11}{:>9}{:>7}{:>13}{:>11}{:>10}{:>9}",
        "rule",
        "MB/step",
        "fused ms",
        "GB/s",
        "%copy",
        "roofline ms",
        "x roofline",
        "cpu ms",
        "vs cpu"
    );
    let print = |m: Measurement| {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<16}{:>10.1}{:>11.3}{:>9.2}{:>6.0}%{:>13.3}{:>10.2}x{:>10.1}{:>8.1}x",
            m.rule,
            m.bytes_per_step as f64 / 1e6,
            ms(m.fused),
            m.gigabytes_per_second(),
            100.0 * m.gigabytes_per_second() / copy,
            ms(m.roofline),
            m.roofline_ratio(),
            ms(m.cpu),
            m.cpu_speedup()
        );
    };
    let momentum = Sgd {
        momentum: 0.9,
        ..Sgd::default()
    };
    let repetitions = Repetitions {
        warmup,
        steps,
        cpu_steps,
    };
    print(measure(&gpu, Sgd::default(), size, repetitions)?);
    print(measure(&gpu, momentum, size, repetitions)?);
    print(measure(&gpu, Adam::default(), size, repetitions)?);
    print(measure(&gpu, Adam::adamw(), size, repetitions)?);
    print(measure(&gpu, RmsProp::default(), size, repetitions)?);
    print(measure(&gpu, Adagrad::default(), size, repetitions)?);
    Ok(())
}
