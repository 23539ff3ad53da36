//! What `fused-optim bench` writes: the terminal table, and the same run as JSON, CSV and an
//! SVG plot of effective bandwidth against size.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::measure::{Clock, HandWritten, Measurement};
use fused_optim::tooling::MAX_STEP_VALUES_BYTES;
use fused_optim::GpuContext;

/// The adapter and the settings a run used: the first lines of every output.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub clock: Clock,
    pub window_elements: u64,
    pub workgroups_per_dimension: u32,
    pub storage_offset_alignment: u32,
    /// How the kernels got their per-dispatch values (`Immediates` or `UniformCopy`).
    pub step_values: String,
    pub warmup: u32,
    pub steps: u32,
    pub cpu_steps: u32,
}

impl Setup {
    pub fn new(gpu: &GpuContext, warmup: u32, steps: u32, cpu_steps: u32) -> Self {
        let info = gpu.adapter_info();
        let dispatch = gpu.dispatch_limits();
        Self {
            adapter: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            clock: Clock::of(gpu),
            window_elements: dispatch.window_elements,
            workgroups_per_dimension: dispatch.workgroups_per_dimension,
            storage_offset_alignment: gpu.limits().min_storage_buffer_offset_alignment,
            step_values: format!("{:?}", gpu.step_values_for(MAX_STEP_VALUES_BYTES)),
            warmup,
            steps,
            cpu_steps,
        }
    }

    /// The header lines printed above the table.
    pub fn header(&self) -> String {
        let clock = match self.clock {
            Clock::Timestamps => "GPU timestamps around each step's pass",
            Clock::WallClock => "wall clock around submit + wait (no timestamp queries)",
        };
        format!(
            "adapter: {} ({}, {}; driver {} {})\n\
             limits: window {} f32 per dispatch, {} workgroups per dimension, storage offsets \
             aligned to {} B; per-dispatch values as {}\n\
             timing: {clock}; {} warm-up + {} timed steps per kernel, median [min-max]; {} CPU \
             twin steps",
            self.adapter,
            self.backend,
            self.device_type,
            self.driver,
            self.driver_info,
            self.window_elements,
            self.workgroups_per_dimension,
            self.storage_offset_alignment,
            self.step_values,
            self.warmup,
            self.steps,
            self.cpu_steps,
        )
    }
}

/// A whole run: setup, one row per rule and size, and the sizes skipped with the reason.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub rows: Vec<Measurement>,
    /// The hand-written yardsticks, where the run timed them.
    pub hand_written: Vec<HandWritten>,
    pub skipped: Vec<String>,
}

/// Column titles and widths of the table (the rule's column is left-aligned).
const COLUMNS: [(&str, usize); 21] = [
    ("rule", 26),
    ("params", 8),
    ("B/p moved", 10),
    ("B/p stored", 11),
    ("MB/step", 9),
    ("fused ms", 10),
    ("spread", 8),
    ("GB/s", 8),
    ("%copy", 7),
    ("roofline ms", 13),
    ("x roofline", 11),
    ("floor ms", 10),
    ("x floor", 9),
    ("copy ms", 9),
    ("x copy", 8),
    ("unfused ms", 12),
    ("unfused MB", 11),
    ("vs unfused", 11),
    ("vs cpu", 8),
    ("shard ms", 10),
    ("x whole", 9),
];

/// The table's name of a row: the rule, its precision unless f32, and its grad guard if any.
fn label(m: &Measurement) -> String {
    let mut label = m.rule.to_owned();
    if m.precision != "f32" {
        label = format!("{label} {}", m.precision);
    }
    if m.guard != "none" {
        label = format!("{label} +{}", m.guard);
    }
    label
}

/// `value` with `decimals` decimals and `suffix`, right-aligned in `width` columns, or `-` where
/// it was not measured (NaN).
fn cell(value: f64, decimals: usize, suffix: &str, width: usize) -> String {
    match value.is_nan() {
        true => format!("{:>width$}", "-"),
        false => format!("{value:>0$.decimals$}{suffix}", width - suffix.len()),
    }
}

/// One table line per row: the terminal's view of the report. The unfused chain and the CPU
/// twin are f32 only: `-` for other precisions (and for the CPU when `--cpu-steps 0`).
pub fn table(rows: &[Measurement]) -> String {
    let name_width = rows
        .iter()
        .map(|m| label(m).len() + 2)
        .fold(COLUMNS[0].1, usize::max);
    let mut out = format!("{:<name_width$}", COLUMNS[0].0);
    for (title, width) in &COLUMNS[1..] {
        out += &format!("{title:>width$}");
    }
    out.push('\n');
    for m in rows {
        out += &format!(
            "{:<name_width$}{:>8}{:>10.2}{:>11.2}{:>9.1}{:>10.3}{:>7.0}%{:>8.2}{:>6.0}%{:>13.3}{:>10.2}x{:>10.3}{:>8.2}x{:>9.3}{:>7.2}x{}{}{}{}{}{}\n",
            label(m),
            size_label(m.params),
            m.bytes_per_step as f64 / m.params as f64,
            m.stored_bytes_per_param,
            m.bytes_per_step as f64 / 1e6,
            m.fused.median_ms,
            m.fused.spread_percent(),
            m.gigabytes_per_second(),
            m.copy_percent(),
            m.roofline.median_ms,
            m.roofline_ratio(),
            m.byte_floor.median_ms,
            m.byte_floor_ratio(),
            m.copy_floor_ms(),
            m.copy_ratio(),
            cell(m.unfused.median_ms, 3, "", 12),
            cell(
                match m.unfused.samples {
                    0 => f64::NAN,
                    _ => m.unfused_bytes_per_step as f64 / 1e6,
                },
                1,
                "",
                11
            ),
            cell(m.unfused_speedup(), 1, "x", 11),
            cell(m.cpu_speedup(), 1, "x", 8),
            cell(m.shard.median_ms, 3, "", 10),
            cell(m.shard_ratio(), 2, "x", 9),
        );
    }
    out
}

/// The hand-written kernels' medians and spreads, one line per size.
pub fn hand_written_table(rows: &[HandWritten]) -> String {
    let mut out = format!(
        "{:>8}{:>12}{:>8}{:>12}{:>8}\n",
        "params", "adam ms", "spread", "stream ms", "spread"
    );
    for row in rows {
        out += &format!(
            "{:>8}{:>12.3}{:>7.0}%{:>12.3}{:>7.0}%\n",
            size_label(row.params),
            row.adam.median_ms,
            row.adam.spread_percent(),
            row.stream.median_ms,
            row.stream.spread_percent(),
        );
    }
    out
}

/// `1M`, `4M`, ... for sizes that are whole binary millions or thousands, else the number.
pub fn size_label(params: usize) -> String {
    match params {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// One CSV record per row, flat.
#[derive(Serialize)]
struct CsvRow<'a> {
    rule: &'a str,
    precision: &'a str,
    guard: &'a str,
    params: usize,
    stored_bytes_per_param: f64,
    bytes_per_step: u64,
    fused_median_ms: f64,
    fused_min_ms: f64,
    fused_max_ms: f64,
    fused_dispatches: usize,
    gb_per_s: f64,
    copy_gb_per_s: f64,
    roofline_median_ms: f64,
    roofline_ratio: f64,
    byte_floor_median_ms: f64,
    byte_floor_ratio: f64,
    copy_floor_ms: f64,
    copy_ratio: f64,
    unfused_median_ms: f64,
    unfused_dispatches: usize,
    unfused_bytes_per_step: u64,
    unfused_speedup: f64,
    cpu_ms: f64,
    cpu_speedup: f64,
    shards: usize,
    shard_median_ms: f64,
    shard_ratio: f64,
}

pub fn write_json(report: &Report, path: &Path) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(file, report).map_err(std::io::Error::other)
}

pub fn write_csv(report: &Report, path: &Path) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for m in &report.rows {
        writer
            .serialize(CsvRow {
                rule: m.rule,
                precision: &m.precision,
                guard: &m.guard,
                params: m.params,
                stored_bytes_per_param: m.stored_bytes_per_param,
                bytes_per_step: m.bytes_per_step,
                fused_median_ms: m.fused.median_ms,
                fused_min_ms: m.fused.min_ms,
                fused_max_ms: m.fused.max_ms,
                fused_dispatches: m.fused_dispatches,
                gb_per_s: m.gigabytes_per_second(),
                copy_gb_per_s: m.copy_gb_per_s,
                roofline_median_ms: m.roofline.median_ms,
                roofline_ratio: m.roofline_ratio(),
                byte_floor_median_ms: m.byte_floor.median_ms,
                byte_floor_ratio: m.byte_floor_ratio(),
                copy_floor_ms: m.copy_floor_ms(),
                copy_ratio: m.copy_ratio(),
                unfused_median_ms: m.unfused.median_ms,
                unfused_dispatches: m.unfused_dispatches,
                unfused_bytes_per_step: m.unfused_bytes_per_step,
                unfused_speedup: m.unfused_speedup(),
                cpu_ms: m.cpu_ms,
                cpu_speedup: m.cpu_speedup(),
                shards: m.shards,
                shard_median_ms: m.shard.median_ms,
                shard_ratio: m.shard_ratio(),
            })
            .map_err(std::io::Error::other)?;
    }
    writer.flush()
}

/// Effective GB/s against size, one solid line per rule (and precision, where not f32) and its
/// roofline dashed in the same colour, with the copy bandwidth in black; the title names the
/// adapter.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let rows = &report.rows;
    if rows.is_empty() {
        return Err("no rows were measured, so there is nothing to plot".into());
    }
    // One series per table label (rule and precision), in the rows' order.
    let mut rules: Vec<String> = Vec::new();
    for m in rows {
        if !rules.contains(&label(m)) {
            rules.push(label(m));
        }
    }
    let sizes = || rows.iter().map(|m| m.params as f64);
    let (low, high) = (
        sizes().fold(f64::INFINITY, f64::min),
        sizes().fold(0.0, f64::max),
    );
    let top = rows
        .iter()
        .flat_map(|m| {
            [
                m.gigabytes_per_second(),
                m.roofline_gigabytes_per_second(),
                m.copy_gb_per_s,
            ]
        })
        .fold(0.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} ({}): effective GB/s, fused (solid) and roofline (dashed)",
        report.setup.adapter, report.setup.backend
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((low * 0.8..high * 1.25).log_scale(), 0.0..top.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("parameters")
        .y_desc("GB/s (bytes the rule must move / time)")
        .x_label_formatter(&|x| size_label(*x as usize))
        .draw()?;
    for (index, rule) in rules.iter().enumerate() {
        let colour = Palette99::pick(index).to_rgba();
        let of_rule = || rows.iter().filter(move |m| label(m) == *rule);
        chart
            .draw_series(LineSeries::new(
                of_rule().map(|m| (m.params as f64, m.gigabytes_per_second())),
                colour.stroke_width(2),
            ))?
            .label(rule.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(of_rule().map(|m| {
            Circle::new(
                (m.params as f64, m.gigabytes_per_second()),
                3,
                colour.filled(),
            )
        }))?;
        chart.draw_series(DashedLineSeries::new(
            of_rule().map(|m| (m.params as f64, m.roofline_gigabytes_per_second())),
            6,
            4,
            colour.stroke_width(1),
        ))?;
    }
    let mut copies: Vec<(f64, f64)> = rows
        .iter()
        .map(|m| (m.params as f64, m.copy_gb_per_s))
        .collect();
    copies.sort_by(|a, b| a.0.total_cmp(&b.0));
    copies.dedup_by(|a, b| a.0 == b.0);
    chart
        .draw_series(LineSeries::new(copies, BLACK.stroke_width(1)))?
        .label("copy_buffer_to_buffer")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// What `fused-optim checkpoint inspect` prints of `checkpoint` (a file of `bytes` bytes):
/// the format version, the rule, the step counts, each group's formats and hyperparameters,
/// then every tensor with its type, shape and size.
pub fn checkpoint_summary(checkpoint: &fused_optim::Checkpoint, bytes: usize) -> String {
    let meta = |key: &str| checkpoint.metadata.get(key).map_or("?", String::as_str);
    let mut out = format!(
        "safetensors, {bytes} bytes, format version {}\nrule: {}; {} steps recorded, {} applied\n",
        meta(fused_optim::checkpoint::VERSION_KEY),
        meta("fused_optim.rule"),
        meta("fused_optim.steps"),
        meta("fused_optim.applied"),
    );
    // Each group's tensors in order; a file whose places do not parse lists none.
    let mut params: Vec<_> = checkpoint
        .places()
        .unwrap_or_default()
        .into_iter()
        .collect();
    params.sort_by_key(|(_, place)| (place.group, place.index));
    for g in 0.. {
        let Some(precision) = checkpoint
            .metadata
            .get(&format!("fused_optim.group.{g}.precision"))
        else {
            break;
        };
        let prefix = format!("param_groups.{g}.");
        let hyperparameters: Vec<String> = checkpoint
            .metadata
            .iter()
            .filter_map(|(key, value)| Some(format!("{}={value}", key.strip_prefix(&prefix)?)))
            .collect();
        out += &format!("group {g} [{precision}]: {}\n", hyperparameters.join(", "));
        let tensors: Vec<String> = params
            .iter()
            .filter(|(_, place)| place.group == g)
            .map(|(name, place)| format!("{name} ({})", place.elements))
            .collect();
        out += &format!("  tensors: {}\n", tensors.join(", "));
    }
    let total: usize = checkpoint.tensors.values().map(|t| t.data.len()).sum();
    out += &format!("{} tensors, {total} bytes:\n", checkpoint.tensors.len());
    let width = checkpoint
        .tensors
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0);
    for (name, tensor) in &checkpoint.tensors {
        out += &format!(
            "  {name:<width$}  {:<5} {:>12} {:>12} B\n",
            format!("{:?}", tensor.dtype),
            format!("{:?}", tensor.shape),
            tensor.data.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use fused_optim::{Checkpoint, HostTensor, TensorDtype};

    #[test]
    fn a_checkpoint_summary_names_the_rule_groups_and_tensors() {
        let mut checkpoint = Checkpoint::default();
        for (key, value) in [
            (fused_optim::checkpoint::VERSION_KEY, "1"),
            ("fused_optim.rule", "Adam"),
            ("fused_optim.steps", "3"),
            ("fused_optim.applied", "2"),
            ("fused_optim.param.0", "0:0:5"),
            (
                "fused_optim.group.0.precision",
                "bf16,master=remainder,state=8bit",
            ),
            ("param_groups.0.lr", "0.001"),
        ] {
            checkpoint.metadata.insert(key.into(), value.into());
        }
        checkpoint.tensors.insert(
            "state.0.exp_avg".into(),
            HostTensor::vector(TensorDtype::U8, vec![0; 5]),
        );
        checkpoint
            .tensors
            .insert("state.0.step".into(), HostTensor::scalar_f32(2.0));
        let summary = super::checkpoint_summary(&checkpoint, 400);
        for want in [
            "format version 1",
            "rule: Adam; 3 steps recorded, 2 applied",
            "group 0 [bf16,master=remainder,state=8bit]: lr=0.001",
            "  tensors: 0 (5)",
            "2 tensors, 9 bytes",
            "state.0.exp_avg  U8",
        ] {
            assert!(summary.contains(want), "{want:?} not in\n{summary}");
        }
    }
}
