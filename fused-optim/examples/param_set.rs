//! A model's many tensors stepped together: register them by name, put biases and norms in a
//! group without weight decay, and update everything with one dispatch per group.
//!
//! cargo run --release --example param_set

use fused_optim::{Adam, GpuContext, ParamGroup, ParamSet};

fn main() -> fused_optim::Result<()> {
    let gpu = GpuContext::new()?;
    println!("adapter: {}", gpu.adapter_info().name);

    // Two small layers and a norm, as a trainer would list its parameters.
    let tensors = [
        ("layer1.weight", 64 * 33),
        ("layer1.bias", 64),
        ("layer2.weight", 10 * 64),
        ("layer2.bias", 10),
        ("norm.weight", 10),
    ];
    let decayed = |name: &str| name.ends_with(".weight") && !name.starts_with("norm");
    let names = |decay: bool| {
        tensors
            .iter()
            .map(|(name, _)| *name)
            .filter(move |name| decayed(name) == decay)
    };
    let adamw = Adam {
        lr: 0.05,
        weight_decay: 0.01,
        ..Adam::adamw()
    };
    let groups = vec![
        ParamGroup::new(adamw.clone(), names(true)),
        ParamGroup::new(
            Adam {
                weight_decay: 0.0,
                ..adamw
            },
            names(false),
        ),
    ];
    let mut optimizer = ParamSet::new(&gpu, &tensors, groups)?;
    let layout = optimizer.layout().clone();
    for slot in layout.tensors() {
        println!(
            "  {:<14} elements {:>5}..{:<5} group {}",
            slot.name,
            slot.offset,
            slot.offset + slot.len,
            slot.group
        );
    }
    println!(
        "{} elements packed, {} dispatches per step, {} bytes of optimizer state",
        layout.len(),
        optimizer.dispatches_per_step(),
        optimizer.state_bytes()
    );

    // One params and one grads buffer for the whole model. A trainer binds each layer to its
    // slice: `layout.tensor("layer1.weight")?.binding(&params)`.
    let params = gpu.zeros("params", layout.len())?;
    let grads = gpu.zeros("grads", layout.len())?;
    let target = |slot: usize, i: usize| ((slot * 7 + i) % 13) as f32 / 13.0 - 0.5;

    // Minimise Σ (θ - target)² per tensor; the "backward pass" runs on the host here.
    for step in 1..=300 {
        let theta = gpu.download(&params)?;
        let mut grad = vec![0.0; theta.len()];
        let mut loss = 0.0;
        for (index, slot) in layout.tensors().iter().enumerate() {
            for (i, (g, t)) in grad[slot.range()]
                .iter_mut()
                .zip(&theta[slot.range()])
                .enumerate()
            {
                let diff = t - target(index, i);
                *g = 2.0 * diff;
                loss += diff * diff;
            }
        }
        gpu.write(&grads, &grad)?;
        optimizer.step(&params, &grads)?;
        if step % 100 == 0 || step == 1 {
            println!("step {step:>3}: loss {loss:.5}");
        }
    }
    let bias = optimizer.read_state("exp_avg", "layer2.bias")?;
    println!("layer2.bias exp_avg[..3] = {:?}", &bias[..3]);
    Ok(())
}
