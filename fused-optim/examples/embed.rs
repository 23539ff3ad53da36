//! A trainer's step, embedded: your own device, your own buffers, your own command encoder.
//! The optimizer step is recorded after the (here, pretend) backward pass and submitted with it.
//!
//! cargo run --release --example embed

use fused_optim::{Adam, GpuContext, Optimizer};

fn main() -> fused_optim::Result<()> {
    // A trainer normally already has these; fused-optim wraps them without taking over.
    let gpu = GpuContext::new()?;
    let context = GpuContext::from_device(gpu.device().clone(), gpu.queue().clone());
    println!("adapter: {}", context.adapter_info().name);

    // Minimise f(θ) = Σ (θ_i - target_i)², gradient 2 (θ - target), for 3 parameters.
    let target = [1.0f32, -2.0, 0.5];
    let params = context.upload("θ", &[0.0; 3])?;
    let grads = context.upload("∇θ", &[0.0; 3])?;
    let mut adam = Optimizer::new(
        &context,
        Adam {
            lr: 0.1,
            ..Adam::default()
        },
        3,
    )?;

    for step in 1..=200 {
        // The "backward pass": a trainer would record its own kernels here.
        let theta = context.download(&params)?;
        let grad: Vec<f32> = theta
            .iter()
            .zip(&target)
            .map(|(t, y)| 2.0 * (t - y))
            .collect();
        context.write(&grads, &grad)?;

        let mut encoder = context.device().create_command_encoder(&Default::default());
        adam.record_step(&mut encoder, &params, &grads)?;
        context.queue().submit([encoder.finish()]);

        if step == 100 {
            adam.set_lr(0.01)?; // a schedule: only the per-step uniform changes
        }
        if step % 50 == 0 {
            println!("step {step:>3}: θ = {:?}", context.download(&params)?);
        }
    }
    println!("target     {target:?}");
    Ok(())
}
