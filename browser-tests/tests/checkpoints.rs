//! What waits in a browser: steps recorded into the caller's encoder are refused as
//! unsubmitted until the submit and accepted right after it, before the GPU has run them (the
//! submission marker's mapping is pending); a checkpoint's copies are awaited; a checkpoint
//! travels as bytes, and a restore from them resumes bit for bit. Adam in the leanest format
//! under a loss scaler, so codes, scales, the remainder master and the guard's status all
//! travel.
#![cfg(target_arch = "wasm32")]

use browser_tests::{bits, gpu, random_nonzero, status_bits};
use fused_optim::{Adam, Checkpoint, Error, GradGuard, GradScaler, Optimizer, Precision};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const LEN: usize = 1025;

#[wasm_bindgen_test]
async fn recorded_steps_and_checkpoints_wait_for_their_submit_and_resume_from_bytes() {
    let gpu = gpu().await;
    let precision = Precision::lean();
    let guard = GradGuard::new().with_scaler(GradScaler::default().with_init_scale(256.0));
    let new_optimizer = || {
        Optimizer::with_precision(&gpu, Adam::default(), precision.clone(), LEN)
            .unwrap()
            .with_grad_guard(guard)
            .unwrap()
    };
    let params_host = precision.params.encode(&random_nonzero(LEN, 1));
    let params = gpu.upload_bytes("params", &params_host).unwrap();
    let grads = gpu
        .upload_bytes("grads", &precision.grads.encode(&random_nonzero(LEN, 2)))
        .unwrap();
    let mut optimizer = new_optimizer();

    // Three steps in one encoder: refused as unsubmitted, then readable once submitted.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 0..3 {
        optimizer
            .record_step(&mut encoder, &params, &grads)
            .unwrap();
    }
    let unsubmitted = optimizer.read_state_async("exp_avg", 0).await;
    assert!(
        matches!(unsubmitted, Err(Error::UnsubmittedStep { step: 1, .. })),
        "{unsubmitted:?}"
    );
    gpu.queue().submit([encoder.finish()]);
    // At once, before the browser has run anything: the markers' mappings are pending, which
    // says the steps were submitted.
    let submitted = optimizer.read_state_async("exp_avg", 0).await;
    assert!(submitted.is_ok(), "{submitted:?}");
    assert_eq!(optimizer.read_state_async("step", 0).await.unwrap(), [3.0]);

    // A checkpoint's copies: an error while their encoder waits, the checkpoint after.
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    let pending = optimizer.record_checkpoint(&mut encoder).unwrap();
    let early = pending.wait_async().await;
    assert!(
        matches!(&early, Err(Error::Gpu { message, .. }) if message.contains("not submitted")),
        "{early:?}"
    );
    let pending = optimizer.record_checkpoint(&mut encoder).unwrap();
    gpu.queue().submit([encoder.finish()]);
    let bytes = pending.wait_async().await.unwrap().to_bytes().unwrap();

    // The bytes restore into a new optimizer; both take two more steps from the same params.
    let params_restored = gpu
        .upload_bytes(
            "restored params",
            &gpu.download_bytes_async(&params).await.unwrap(),
        )
        .unwrap();
    let mut restored = new_optimizer();
    restored
        .restore(&Checkpoint::from_bytes(&bytes).unwrap())
        .unwrap();
    for _ in 0..2 {
        optimizer.step(&params, &grads).unwrap();
        restored.step(&params_restored, &grads).unwrap();
    }
    assert_eq!(
        gpu.download_bytes_async(&params).await.unwrap(),
        gpu.download_bytes_async(&params_restored).await.unwrap()
    );
    for name in optimizer.state_names() {
        let (got, want) = (
            restored.read_state_async(name, 0).await.unwrap(),
            optimizer.read_state_async(name, 0).await.unwrap(),
        );
        assert_eq!(bits(&got), bits(&want), "{name}");
    }
    let status = |status: Option<_>| status.as_ref().map(status_bits);
    assert_eq!(
        status(restored.read_grad_status_async().await.unwrap()),
        status(optimizer.read_grad_status_async().await.unwrap())
    );
    gpu.settle().await.unwrap();
}
