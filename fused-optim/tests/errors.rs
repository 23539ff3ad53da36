//! One test per error kind: the variant, a message that says what to do, and nothing half-applied
//! (params, state and the step count unchanged).

mod common;

use fused_optim::baseline::UnfusedChain;
use fused_optim::{
    Adagrad, Adam, AdapterChoice, CpuOptimizer, Error, ForeachOptimizer, GpuContext, Optimizer,
    ParamGroup, ParamSet, RmsProp, Sgd,
};

const LEN: usize = 1025;

/// An Adam optimizer that has taken one step, with its params buffer and the values both hold.
struct Stepped {
    optimizer: Optimizer<Adam>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    params_then: Vec<f32>,
    exp_avg_then: Vec<f32>,
}

fn stepped(gpu: &GpuContext) -> Stepped {
    let (params, grads) = common::params_and_grads(gpu, LEN);
    let mut optimizer = Optimizer::new(gpu, Adam::default(), LEN).unwrap();
    optimizer.step(&params, &grads).unwrap();
    Stepped {
        params_then: gpu.download(&params).unwrap(),
        exp_avg_then: optimizer.read_state("exp_avg", 0).unwrap(),
        optimizer,
        params,
        grads,
    }
}

impl Stepped {
    fn assert_untouched(&self, gpu: &GpuContext) {
        assert_eq!(self.optimizer.step_count(), 1, "step count moved");
        assert_eq!(
            gpu.download(&self.params).unwrap(),
            self.params_then,
            "params moved"
        );
        assert_eq!(
            self.optimizer.read_state("exp_avg", 0).unwrap(),
            self.exp_avg_then,
            "state moved"
        );
    }
}

fn buffer(gpu: &GpuContext, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test buffer"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

#[test]
fn no_adapter_says_how_to_get_one() {
    let choice = AdapterChoice {
        backends: wgpu::Backends::all(),
        name: Some("no adapter is called this".into()),
    };
    let error = GpuContext::open(&choice).err().expect("no such adapter");
    assert!(matches!(error, Error::NoAdapter { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("apt-get install mesa-vulkan-drivers"),
        "{error}"
    );
}

#[test]
fn grads_without_storage_usage() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let grads = buffer(gpu, LEN as u64 * 4, wgpu::BufferUsages::COPY_DST);
    let error = s.optimizer.step(&s.params, &grads).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MissingUsage {
                ref buffer,
                usage: "STORAGE"
            } if buffer == "grads"
        ),
        "{error:?}"
    );
    s.assert_untouched(gpu);
}

#[test]
fn params_and_grads_of_different_lengths() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let grads = gpu
        .upload("short grads", &common::random_nonzero(LEN - 1, 3))
        .unwrap();
    let error = s.optimizer.step(&s.params, &grads).unwrap_err();
    assert!(
        matches!(
            error,
            Error::LengthMismatch {
                params: 1025,
                grads: 1024,
                ..
            }
        ),
        "{error:?}"
    );
    s.assert_untouched(gpu);
}

#[test]
fn buffers_not_matching_the_state() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let params = gpu
        .upload("params", &common::random_nonzero(LEN + 2, 4))
        .unwrap();
    let grads = gpu
        .upload("grads", &common::random_nonzero(LEN + 2, 5))
        .unwrap();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = s
        .optimizer
        .record_step(&mut encoder, &params, &grads)
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::StateMismatch {
                expected: 1025,
                got: 1027,
                ..
            }
        ),
        "{error:?}"
    );
    gpu.queue().submit([encoder.finish()]);
    s.assert_untouched(gpu);
}

#[test]
fn buffers_not_made_of_f32() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let grads = buffer(gpu, LEN as u64 * 4 + 2, wgpu::BufferUsages::STORAGE);
    let error = s.optimizer.step(&s.params, &grads).unwrap_err();
    assert!(
        matches!(
            error,
            Error::NotF32Sized { ref buffer, .. } if buffer == "grads"
        ),
        "{error:?}"
    );
    s.assert_untouched(gpu);
}

fn assert_too_large<T>(what: &str, result: fused_optim::Result<T>) {
    match result {
        Err(Error::BufferTooLarge { bytes, limit, .. }) => assert!(bytes > limit, "{what}"),
        Err(error) => panic!("{what}: {error:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

/// Lengths from just past the largest buffer up to `usize::MAX` are refused with
/// `BufferTooLarge` by every constructor, before anything is planned or allocated (planning
/// `usize::MAX / 8` elements used to abort the process allocating its windows).
#[test]
fn absurd_lengths_are_refused_before_planning_or_allocating() {
    let gpu = common::gpu();
    let limit = gpu.limits().max_buffer_size;
    for len in [
        (limit / 4 + 1) as usize,
        usize::MAX / 8,
        usize::MAX / 4 + 1,
        usize::MAX - 2,
        usize::MAX,
    ] {
        let what = |kind: &str| format!("{kind} of {len} elements");
        assert_too_large(&what("Adam"), Optimizer::new(gpu, Adam::default(), len));
        assert_too_large(&what("plain SGD"), Optimizer::new(gpu, Sgd::default(), len));
        assert_too_large(
            &what("a foreach list"),
            ForeachOptimizer::new(gpu, Adagrad::default(), &[3, len]),
        );
        let tensors = [("w", len), ("b", 3)];
        let groups = vec![
            ParamGroup::new(RmsProp::default(), ["b"]),
            ParamGroup::new(RmsProp::default(), ["w"]),
        ];
        assert_too_large(
            &what("a parameter set"),
            ParamSet::new(gpu, &tensors, groups),
        );
        assert_too_large(
            &what("an unfused chain"),
            UnfusedChain::new(gpu, Adam::default(), len),
        );
        assert_too_large(&what("a zeroed buffer"), gpu.zeros("huge", len as u64));
    }
    let error = CpuOptimizer::new(Adam::default(), usize::MAX).unwrap_err();
    assert!(matches!(error, Error::HostOutOfMemory { .. }), "{error:?}");
}

/// A buffer made on another device (another `GpuContext`) is a typed error naming it, with
/// nothing recorded or changed, where wgpu would otherwise panic or reject the bind group.
#[test]
fn buffers_of_another_device_are_refused() {
    let gpu = common::gpu();
    let other = GpuContext::new().unwrap();
    let mut s = stepped(gpu);
    let foreign = other
        .upload("foreign", &common::random_nonzero(LEN, 3))
        .unwrap();
    let error = s.optimizer.step(&foreign, &s.grads).unwrap_err();
    assert!(
        matches!(error, Error::ForeignBuffer { ref buffer } if buffer == "params"),
        "{error:?}"
    );
    assert!(error.to_string().contains("another device"), "{error}");
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = s
        .optimizer
        .record_step(&mut encoder, &s.params, &foreign)
        .unwrap_err();
    assert!(
        matches!(error, Error::ForeignBuffer { ref buffer } if buffer == "grads"),
        "{error:?}"
    );
    common::assert_encoder_still_clean(gpu, encoder);
    s.assert_untouched(gpu);

    let own = gpu.upload("own", &[0.5; 3]).unwrap();
    let own_grads = gpu.upload("own grads", &[0.5; 3]).unwrap();
    let mut list = ForeachOptimizer::new(gpu, Sgd::default(), &[3, LEN]).unwrap();
    let error = list
        .step(&[(&own, &own_grads), (&foreign, &s.grads)])
        .unwrap_err();
    assert!(
        matches!(error, Error::ForeignBuffer { ref buffer } if buffer == "params[1]"),
        "{error:?}"
    );
    // The optimizer still works with its own device's buffers.
    s.optimizer.step(&s.params, &s.grads).unwrap();
    assert_eq!(s.optimizer.step_count(), 2);
}

#[test]
fn wgpu_validation_errors_are_caught_not_aborted() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let grads = gpu
        .upload("grads", &common::random_nonzero(LEN, 6))
        .unwrap();
    grads.destroy();
    let error = s.optimizer.step(&s.params, &grads).unwrap_err();
    assert!(matches!(error, Error::Gpu { .. }), "{error:?}");
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = s
        .optimizer
        .record_step(&mut encoder, &s.params, &grads)
        .unwrap_err();
    assert!(matches!(error, Error::Gpu { .. }), "{error:?}");
    common::assert_encoder_still_clean(gpu, encoder);
    s.assert_untouched(gpu);
    // The optimizer still works with healthy buffers.
    s.optimizer.step(&s.params, &s.grads).unwrap();
    assert_eq!(s.optimizer.step_count(), 2);
}

#[test]
fn params_and_grads_in_one_buffer() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = s
        .optimizer
        .record_step(&mut encoder, &s.params, &s.params)
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::AliasedBuffers { ref first, ref second }
                if first == "params" && second == "grads"
        ),
        "{error:?}"
    );
    let own_state = s.optimizer.state_buffer("exp_avg").unwrap().clone();
    let error = s
        .optimizer
        .record_step(&mut encoder, &s.params, &own_state)
        .unwrap_err();
    assert!(
        matches!(error, Error::AliasedBuffers { ref second, .. } if second == "grads"),
        "{error:?}"
    );
    common::assert_encoder_still_clean(gpu, encoder);
    s.assert_untouched(gpu);
}

#[test]
fn a_lost_caller_owned_device_is_reported() {
    let own = GpuContext::new().unwrap();
    let gpu = GpuContext::from_device(own.device().clone(), own.queue().clone());
    let params = gpu.upload("params", &[1.0; 3]).unwrap();
    let grads = gpu.upload("grads", &[1.0; 3]).unwrap();
    let mut optimizer = Optimizer::new(&gpu, Adam::default(), 3).unwrap();
    optimizer.step(&params, &grads).unwrap(); // binds and caches the bind group
                                              // wgpu delivers the loss once the queue has drained, so let that step finish first.
    gpu.wait().unwrap();
    assert_eq!(gpu.device_lost(), None);
    gpu.device().destroy();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let error = optimizer
        .record_step(&mut encoder, &params, &grads)
        .unwrap_err();
    assert!(matches!(error, Error::DeviceLost { .. }), "{error:?}");
    let error = optimizer.step(&params, &grads).unwrap_err();
    assert!(matches!(error, Error::DeviceLost { .. }), "{error:?}");
    assert!(gpu.device_lost().is_some());
    assert!(matches!(
        gpu.download(&params).unwrap_err(),
        Error::DeviceLost { .. }
    ));
    assert_eq!(optimizer.step_count(), 1);
}

#[test]
fn empty_buffers_download_as_empty() {
    let gpu = common::gpu();
    let empty = gpu.upload("empty", &[]).unwrap();
    assert_eq!(gpu.download(&empty).unwrap(), Vec::<f32>::new());
}

#[test]
fn a_lost_device_is_reported() {
    let gpu = GpuContext::new().unwrap();
    let params = gpu.upload("params", &[1.0; 3]).unwrap();
    let grads = gpu.upload("grads", &[1.0; 3]).unwrap();
    let mut optimizer = Optimizer::new(&gpu, Sgd::default(), 3).unwrap();
    gpu.device().destroy();
    let error = optimizer.step(&params, &grads).unwrap_err();
    assert!(matches!(error, Error::DeviceLost { .. }), "{error:?}");
    assert_eq!(optimizer.step_count(), 0);
}

#[test]
fn unknown_state_lists_what_is_kept() {
    let gpu = common::gpu();
    let s = stepped(gpu);
    let error = s.optimizer.read_state("max_exp_avg_sq", 0).unwrap_err();
    assert!(matches!(error, Error::UnknownState { .. }), "{error:?}");
    assert!(
        error.to_string().contains("exp_avg, exp_avg_sq, step"),
        "{error}"
    );
    assert_eq!(s.optimizer.read_state("step", 0).unwrap(), [1.0]);
}

#[test]
fn invalid_hyperparameters_name_the_field() {
    let invalid: Vec<(&str, fused_optim::Result<CpuOptimizer<Adam>>)> = vec![
        (
            "lr",
            CpuOptimizer::new(
                Adam {
                    lr: -1e-3,
                    ..Adam::default()
                },
                1,
            ),
        ),
        (
            "lr",
            CpuOptimizer::new(
                Adam {
                    lr: f64::NAN,
                    ..Adam::default()
                },
                1,
            ),
        ),
        (
            "eps",
            CpuOptimizer::new(
                Adam {
                    eps: 0.0,
                    ..Adam::default()
                },
                1,
            ),
        ),
        (
            "betas.0",
            CpuOptimizer::new(
                Adam {
                    betas: (1.0, 0.999),
                    ..Adam::default()
                },
                1,
            ),
        ),
        (
            "betas.1",
            CpuOptimizer::new(
                Adam {
                    betas: (0.9, -0.1),
                    ..Adam::default()
                },
                1,
            ),
        ),
        (
            "weight_decay",
            CpuOptimizer::new(
                Adam {
                    weight_decay: -1.0,
                    ..Adam::default()
                },
                1,
            ),
        ),
    ];
    let gpu = common::gpu();
    let mut fields: Vec<(&str, Error)> = invalid
        .into_iter()
        .map(|(field, result)| (field, result.unwrap_err()))
        .collect();
    fields.push((
        "momentum",
        Optimizer::new(
            gpu,
            Sgd {
                nesterov: true,
                ..Sgd::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "dampening",
        Optimizer::new(
            gpu,
            Sgd {
                momentum: 0.9,
                dampening: 0.1,
                nesterov: true,
                ..Sgd::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "momentum",
        Optimizer::new(
            gpu,
            Sgd {
                momentum: -0.9,
                ..Sgd::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "alpha",
        Optimizer::new(
            gpu,
            RmsProp {
                alpha: -0.5,
                ..RmsProp::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "eps",
        Optimizer::new(
            gpu,
            RmsProp {
                eps: -1.0,
                ..RmsProp::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "lr_decay",
        Optimizer::new(
            gpu,
            Adagrad {
                lr_decay: -1.0,
                ..Adagrad::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    fields.push((
        "initial_accumulator_value",
        Optimizer::new(
            gpu,
            Adagrad {
                initial_accumulator_value: -1.0,
                ..Adagrad::default()
            },
            1,
        )
        .err()
        .unwrap(),
    ));
    for (field, error) in fields {
        match &error {
            Error::InvalidConfig { field: named, .. } => assert_eq!(*named, field, "{error}"),
            other => panic!("expected InvalidConfig for {field}, got {other:?}"),
        }
        assert!(error.to_string().contains(field), "{error}");
    }
    assert!(matches!(
        Optimizer::new(gpu, Adam::default(), 0).err().unwrap(),
        Error::EmptyParams
    ));
}

#[test]
fn a_rejected_lr_keeps_the_old_one() {
    let gpu = common::gpu();
    let mut s = stepped(gpu);
    let error = s.optimizer.set_lr(-0.5).unwrap_err();
    assert!(
        matches!(error, Error::InvalidConfig { field: "lr", .. }),
        "{error:?}"
    );
    assert_eq!(s.optimizer.lr(), Adam::default().lr);
    s.assert_untouched(gpu);
}
