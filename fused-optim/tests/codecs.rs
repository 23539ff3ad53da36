//! The storage formats' codecs: the WGSL (codec.wgsl) against the CPU twin (format::codec)
//! over every class of f32 bit pattern, the bf16 remainder master proven exact by exhaustion
//! over all 2^32 patterns, and stochastic rounding unbiased.

mod common;

use fused_optim::format::codec::{
    bf16_nearest, bf16_stochastic, bf16_value, f16_nearest, f16_stochastic, f16_value,
    join_remainder, random_bits, split_remainder,
};
use wgpu::util::DeviceExt;

/// Outputs per input of the test kernel, in the order `twin` lists them.
const OUTPUTS: usize = 9;

const KERNEL: &str = "
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let k = id.x;
    if k >= arrayLength(&input) {
        return;
    }
    let b = input[k];
    let x = bitcast<f32>(b);
    let r = random_bits(k, 7u);
    let split = split_remainder(x);
    let o = 9u * k;
    output[o] = bf16_nearest(x);
    output[o + 1u] = bf16_stochastic(x, r);
    output[o + 2u] = f16_round(x, 0u, false);
    output[o + 3u] = f16_round(x, r, true);
    output[o + 4u] = split.x | (split.y << 16u);
    output[o + 5u] = bitcast<u32>(join_remainder(split.x, split.y));
    output[o + 6u] = bitcast<u32>(bf16_value(b & 0xffffu));
    output[o + 7u] = bitcast<u32>(f16_value(b & 0xffffu));
    output[o + 8u] = r;
}";

fn twin(k: u32, b: u32) -> [u32; OUTPUTS] {
    let x = f32::from_bits(b);
    let r = random_bits(k, 7);
    let (param, remainder) = split_remainder(x);
    [
        bf16_nearest(x) as u32,
        bf16_stochastic(x, r) as u32,
        f16_nearest(x) as u32,
        f16_stochastic(x, r) as u32,
        param as u32 | (remainder as u32) << 16,
        join_remainder(param, remainder).to_bits(),
        bf16_value(b as u16).to_bits(),
        f16_value(b as u16).to_bits(),
        r,
    ]
}

/// Both signs of every exponent (zeros, subnormals, normals, infinities, NaNs) with the
/// mantissas at each format's rounding boundaries, then random patterns.
fn patterns() -> Vec<u32> {
    let mantissas = [
        0, 1, 0x0fff, 0x1000, 0x1001, 0x2fff, 0x3000, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1_8000,
        0x40_0000, 0x7f_ffff,
    ];
    let mut patterns = Vec::new();
    for sign in [0, 1u32 << 31] {
        for exponent in 0..=255u32 {
            for mantissa in mantissas {
                patterns.push(sign | exponent << 23 | mantissa);
            }
        }
    }
    let mut state = 0x1234_5678u32;
    for _ in 0..50_000 {
        state = random_bits(state, 1);
        patterns.push(state);
    }
    patterns
}

#[test]
fn gpu_codecs_match_the_twin_on_every_bit_pattern_class() {
    let gpu = common::gpu();
    let device = gpu.device();
    let input = patterns();
    let source = format!("{}\n{KERNEL}", fused_optim::tooling::CODEC);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("codecs"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("codecs"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let inputs = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("patterns"),
        contents: bytemuck::cast_slice(&input),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let outputs = gpu
        .zeros("codec outputs", (input.len() * OUTPUTS) as u64)
        .unwrap();
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: inputs.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: outputs.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(input.len().div_ceil(64) as u32, 1, 1);
    }
    gpu.queue().submit([encoder.finish()]);
    let got: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.download_bytes(&outputs).unwrap());
    let names = [
        "bf16 nearest",
        "bf16 stochastic",
        "f16 nearest",
        "f16 stochastic",
        "remainder split",
        "remainder join",
        "bf16 value",
        "f16 value",
        "random bits",
    ];
    for (k, &b) in input.iter().enumerate() {
        let want = twin(k as u32, b);
        for (output, name) in names.iter().enumerate() {
            assert_eq!(
                got[k * OUTPUTS + output],
                want[output],
                "{name} of {b:#010x}: GPU {:#x}, twin {:#x}",
                got[k * OUTPUTS + output],
                want[output]
            );
        }
    }
}

/// Every f32 that is not a NaN comes back bit for bit from its bf16 param and remainder:
/// normals, subnormals, both zeros, infinities and every rounding boundary, by exhaustion.
/// The param is the nearest bf16 (ties away from zero), never more than half an ulp away.
#[test]
fn the_remainder_master_is_exact_for_every_bit_pattern() {
    let check = |range: std::ops::Range<u64>| {
        for b in range {
            let master = f32::from_bits(b as u32);
            if master.is_nan() {
                continue;
            }
            let (param, remainder) = split_remainder(master);
            let back = join_remainder(param, remainder);
            assert_eq!(back.to_bits(), master.to_bits(), "{master:e}");
            let shown = bf16_value(param);
            let truncated = bf16_value((b >> 16) as u16);
            if shown.is_finite() && truncated.is_finite() {
                let nearest = bf16_value(bf16_nearest(master));
                assert!(
                    (shown as f64 - master as f64).abs() <= (nearest as f64 - master as f64).abs(),
                    "{master:e}: {shown:e} is farther than {nearest:e}"
                );
            }
        }
    };
    std::thread::scope(|scope| {
        let half = 1u64 << 31;
        scope.spawn(move || check(0..half));
        check(half..1 << 32);
    });
}

/// Stochastic rounding is unbiased: averaged over many draws it lands on the value itself,
/// for bf16, f16 normals and f16 subnormals.
#[test]
fn stochastic_rounding_is_unbiased() {
    for x in [1.0f32 + 1e-3, -3.25179, 1e-30, 0.3337] {
        let draws = 200_000u32;
        let mean: f64 = (0..draws)
            .map(|k| bf16_value(bf16_stochastic(x, random_bits(k, 3))) as f64)
            .sum::<f64>()
            / draws as f64;
        let ulp = (bf16_value(bf16_nearest(x) + 1) - bf16_value(bf16_nearest(x))).abs() as f64;
        assert!(
            (mean - x as f64).abs() < ulp / 100.0,
            "bf16 {x}: mean {mean}"
        );
    }
    for x in [1.0f32 + 1e-4, -2.81828, 3e-6, 1e-7] {
        let draws = 200_000u32;
        let mean: f64 = (0..draws)
            .map(|k| f16_value(f16_stochastic(x, random_bits(k, 5))) as f64)
            .sum::<f64>()
            / draws as f64;
        let ulp = (f16_value(f16_nearest(x) + 1) - f16_value(f16_nearest(x))).abs() as f64;
        assert!(
            (mean - x as f64).abs() < ulp / 100.0,
            "f16 {x}: mean {mean}"
        );
    }
}
