//! PyTorch interop of checkpoints, against golden data made with real `torch.optim` by
//! tests/checkpoint_reference.py and tools/torch_checkpoint.py: for Adam, AdamW with amsgrad,
//! SGD with momentum, centered RMSprop, Adagrad and NAdam, each over a two-layer model in two
//! parameter groups,
//! - PyTorch's optimizer after three steps, converted to a fused-optim checkpoint, loads into a
//!   `ParamSet` and continues three steps as PyTorch continued;
//! - fused-optim's own checkpoint after three steps, converted to a state dict, continued in
//!   PyTorch as fused-optim continues it.

mod common;

use std::path::PathBuf;

use fused_optim::{
    Adagrad, Adam, Checkpoint, Hyperparameter, NAdam, ParamGroup, ParamSet, RmsProp, Sgd,
    TensorDtype, UpdateRule,
};
use serde_json::Value;

/// tests/pytorch.rs's bound, for the same reason: PyTorch's f32 operations differ from ours
/// by a rounding here and there (centered RMSprop magnifies them most).
const TOLERANCE: f64 = 5e-5;

/// The model's tensors in their layout order (each group's tensors keep this order, as the
/// PyTorch groups list them).
const TENSORS: [&str; 4] = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

fn data() -> &'static Value {
    static DATA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let text = include_str!("data/checkpoint_interop.json");
        serde_json::from_str(text).expect("valid JSON")
    })
}

fn file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/checkpoints/{name}"))
}

/// Group `g`'s rule as the checkpoint's metadata configures it.
fn configured<R: UpdateRule + Default>(checkpoint: &Checkpoint, g: usize) -> R {
    let mut rule = R::default();
    for (name, like) in rule.hyperparameters() {
        let text = &checkpoint.metadata[&format!("param_groups.{g}.{name}")];
        let number = |t: &str| t.parse::<f64>().unwrap();
        let value = match like {
            Hyperparameter::Float(_) => Hyperparameter::Float(number(text)),
            Hyperparameter::Bool(_) => Hyperparameter::Bool(text == "true"),
            Hyperparameter::Pair(..) => {
                let (a, b) = text.split_once(',').unwrap();
                Hyperparameter::Pair(number(a), number(b))
            }
        };
        rule.set_hyperparameter(name, value).unwrap();
    }
    rule
}

/// The model's params (or grads) of `values` (by tensor name) packed as `set` lays them out.
fn packed<R: UpdateRule>(set: &ParamSet<R>, values: &Value) -> Vec<f32> {
    let mut packed = vec![0.0; set.layout().len() as usize];
    for name in TENSORS {
        let view = set.layout().view_mut(&mut packed, name).unwrap();
        view.copy_from_slice(&common::floats(&values[name]));
    }
    packed
}

/// Params and every state PyTorch reported (`expected`) against the set's.
fn compare<R: UpdateRule>(what: &str, set: &ParamSet<R>, params: &wgpu::Buffer, expected: &Value) {
    let gpu = common::gpu();
    let ours: Vec<f32> = bytemuck::pod_collect_to_vec(&gpu.download_bytes(params).unwrap());
    for name in TENSORS {
        let got = set.layout().view(&ours, name).unwrap();
        let error = common::worst_relative_error(got, &common::floats(&expected["params"][name]));
        assert!(error < TOLERANCE, "{what}: {name} off by {error:e}");
    }
    for (key, want) in expected["state"].as_object().unwrap() {
        let (tensor, slot) = key.rsplit_once('.').unwrap();
        let got = set.read_state(slot, tensor).unwrap();
        let error = common::worst_relative_error(&got, &common::floats(want));
        assert!(error < TOLERANCE, "{what}: {key} off by {error:e}");
    }
}

fn interop<R: UpdateRule + Default>(case: &str) {
    let gpu = common::gpu();
    let document = data();
    let data = &document["cases"][case];
    let (saved_at, steps) = (
        document["saved_at"].as_u64().unwrap() as usize,
        document["steps"].as_u64().unwrap() as usize,
    );
    let tensors: Vec<(&str, usize)> = TENSORS
        .iter()
        .map(|&name| {
            let shape = document["shapes"][name].as_array().unwrap();
            (
                name,
                shape.iter().map(|d| d.as_u64().unwrap() as usize).product(),
            )
        })
        .collect();
    let from_torch = Checkpoint::load(file(&format!("{case}.torch.safetensors"))).unwrap();
    let groups: Vec<Vec<String>> = serde_json::from_value(document["groups"].clone()).unwrap();
    let build = || {
        let groups = groups
            .iter()
            .enumerate()
            .map(|(g, names)| ParamGroup::new(configured::<R>(&from_torch, g), names.clone()))
            .collect();
        ParamSet::new(gpu, &tensors, groups).unwrap()
    };
    let run = |set: &mut ParamSet<R>, params: &wgpu::Buffer, range: std::ops::Range<usize>| {
        for step in range {
            let grads = gpu
                .upload("grads", &packed(set, &data["grads"][step]))
                .unwrap();
            set.step(params, &grads).unwrap();
        }
    };

    // PyTorch's three steps, continued here.
    let mut set = build();
    set.restore(&from_torch).unwrap();
    let params = gpu.upload("params", &packed(&set, &data["saved"])).unwrap();
    run(&mut set, &params, saved_at..steps);
    compare(
        &format!("{case} from PyTorch"),
        &set,
        &params,
        &data["torch"],
    );

    // Our three steps, continued in PyTorch.
    let mut ours = build();
    let params = gpu
        .upload("params", &packed(&ours, &data["initial"]))
        .unwrap();
    run(&mut ours, &params, 0..saved_at);
    let checkpoint = ours.checkpoint().unwrap();
    let (state_file, params_file) = (
        file(&format!("{case}.fused.safetensors")),
        file(&format!("{case}.fused-params.safetensors")),
    );
    if std::env::var_os("FUSED_OPTIM_WRITE_GOLDEN").is_some() {
        checkpoint.save(&state_file).unwrap();
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&gpu.download_bytes(&params).unwrap());
        let mut model = Checkpoint {
            metadata: checkpoint.metadata.clone(),
            ..Checkpoint::default()
        };
        for name in TENSORS {
            let view = ours.layout().view(&values, name).unwrap();
            let data = bytemuck::cast_slice(view).to_vec();
            model.tensors.insert(
                name.to_owned(),
                fused_optim::HostTensor::vector(TensorDtype::F32, data),
            );
        }
        model.save(&params_file).unwrap();
        return;
    }
    // The file PyTorch continued from is what fused-optim writes today.
    let stored = Checkpoint::load(&state_file).unwrap();
    assert_eq!(stored.metadata, checkpoint.metadata, "{case}: metadata");
    assert_eq!(
        stored.tensors.keys().collect::<Vec<_>>(),
        checkpoint.tensors.keys().collect::<Vec<_>>()
    );
    for (name, tensor) in &checkpoint.tensors {
        let decode = |t: &fused_optim::HostTensor| match t.dtype {
            TensorDtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(&t.data)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            _ => bytemuck::pod_collect_to_vec::<u8, f32>(&t.data),
        };
        let error = common::worst_relative_error(&decode(tensor), &decode(&stored.tensors[name]));
        assert!(error < TOLERANCE, "{case}: stored {name} off by {error:e}");
    }
    run(&mut ours, &params, saved_at..steps);
    compare(
        &format!("{case} in PyTorch"),
        &ours,
        &params,
        &data["from_fused"],
    );
}

#[test]
fn adam_state_crosses_between_pytorch_and_fused_optim() {
    interop::<Adam>("adam");
    interop::<Adam>("adamw_amsgrad");
}

#[test]
fn sgd_momentum_state_crosses_between_pytorch_and_fused_optim() {
    interop::<Sgd>("sgd_momentum");
}

#[test]
fn rmsprop_centered_state_crosses_between_pytorch_and_fused_optim() {
    interop::<RmsProp>("rmsprop_centered");
}

#[test]
fn adagrad_state_crosses_between_pytorch_and_fused_optim() {
    interop::<Adagrad>("adagrad");
}

#[test]
fn nadam_state_crosses_between_pytorch_and_fused_optim() {
    interop::<NAdam>("nadam");
}

/// The golden pair the converter's tests decode (tools/tests): an Adam checkpoint with bf16
/// params, the 8-bit master correction, 8-bit `exp_avg` and 4-bit `exp_avg_sq`, over 101
/// elements (the last block partial, an odd count of 4-bit codes) after three steps with one
/// inf grad (a NaN `exp_avg` code and an inf `exp_avg_sq` code), and its expansion to f32.
/// The library still writes that checkpoint, and expands it to that file, bit for bit.
/// `FUSED_OPTIM_WRITE_GOLDEN=1` rewrites them.
#[test]
fn compact_golden_pair_is_what_the_library_writes_and_expands() {
    use fused_optim::{Dtype, Optimizer, Precision};
    let gpu = common::gpu();
    let len = 101;
    let params = gpu
        .upload_bytes(
            "params",
            &Dtype::Bf16.encode(&common::random_nonzero(len, 5)),
        )
        .unwrap();
    let grads = gpu
        .upload_bytes("grads", &Dtype::Bf16.encode(&vec![0.0; len]))
        .unwrap();
    let precision: Precision = "bf16,master=8bit,state=8bit,exp_avg_sq=4bit"
        .parse()
        .unwrap();
    let mut adam = Optimizer::with_precision(gpu, Adam::default(), precision, len).unwrap();
    for step in 0..3 {
        let mut values = common::random_nonzero(len, 6 + step);
        values[7] = f32::INFINITY;
        gpu.queue()
            .write_buffer(&grads, 0, &Dtype::Bf16.encode(&values));
        adam.step(&params, &grads).unwrap();
    }
    let checkpoint = adam.checkpoint().unwrap();
    let expanded = checkpoint.expanded().unwrap();
    let (fused, widened) = (
        file("adam_compact.fused.safetensors"),
        file("adam_compact.expanded.safetensors"),
    );
    if std::env::var_os("FUSED_OPTIM_WRITE_GOLDEN").is_some() {
        checkpoint.save(&fused).unwrap();
        expanded.save(&widened).unwrap();
    }
    assert_eq!(Checkpoint::load(&fused).unwrap(), checkpoint);
    assert_eq!(Checkpoint::load(&widened).unwrap(), expanded);
    assert_eq!(
        Checkpoint::load(&fused).unwrap().expanded().unwrap(),
        expanded
    );
}
