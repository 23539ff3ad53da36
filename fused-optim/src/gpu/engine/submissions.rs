//! Which recorded work has been submitted. The engine records steps and checkpoints' copies
//! into callers' encoders and never sees the submit; what must follow them on the GPU's
//! timeline (a checkpoint's copies, a restore's writes, a loss-scale reset, a step submitted on
//! its own) must know they were submitted. Each piece of work recorded into a caller's encoder
//! carries a marker: a 4-byte mappable buffer the encoder maps on submit. No command uses it,
//! so wgpu-core resolves its mapping at the first poll after the submit, whatever the GPU is
//! still running (a buffer no submission uses is ready to map at once): a host-side signal, no
//! GPU work. An encoder dropped unsubmitted drops the mapping's callback uncalled, which says
//! so too. (WebGPU in a browser resolves a mapping only after the queue's earlier work; there
//! the marker's mapping, requested at the submit and pending until then, says it was
//! submitted.) The order in which several encoders are
//! submitted is not seen: work recorded into several must be submitted in recording order.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::callbacks::{mapping_requested, Callbacks};
use crate::gpu::GpuContext;

/// What was recorded into a caller's encoder.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// Step `n`, counted from 1.
    Step(u64),
    /// A checkpoint's copies, taken after this many steps.
    Checkpoint(u64),
}

/// What an operation that must follow recorded work does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    /// Records into the encoder of this id (see [`encoder_id`]): it follows the work already
    /// there.
    Recorded(u64),
    /// Reads the state (or the step count) in a submission of its own.
    Read,
    /// Writes the state (or the loss scale) in a submission of its own or through the queue.
    Write,
    /// A restore: writes everything the recorded steps counted, so a dropped one is no matter.
    Restore,
}

/// Recorded work not yet seen submitted.
struct Unseen {
    work: Work,
    encoder: u64,
    marker: Arc<Callbacks>,
    /// The marker itself, whose mapping a browser requests at the submit.
    buffer: wgpu::Buffer,
}

/// The work recorded into callers' encoders whose submission the host has not seen yet.
#[derive(Default)]
pub(crate) struct Submissions {
    unseen: Mutex<VecDeque<Unseen>>,
    /// Markers whose mapping completed, unmapped and ready for the next step.
    free: Arc<Mutex<Vec<wgpu::Buffer>>>,
}

/// Identifies an encoder while it lives (wgpu compares encoders by their id).
pub(crate) fn encoder_id(encoder: &wgpu::CommandEncoder) -> u64 {
    let mut hasher = DefaultHasher::new();
    encoder.hash(&mut hasher);
    hasher.finish()
}

impl Submissions {
    /// A marker for the next recorded step, taken before anything is recorded so that
    /// nothing fails after.
    pub fn marker(&self, context: &GpuContext) -> Result<wgpu::Buffer> {
        let free = self.free.lock().expect("not poisoned").pop();
        match free {
            Some(marker) => Ok(marker),
            None => context.scoped("allocating a submission marker", || {
                context.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused-optim submission marker"),
                    size: 4,
                    usage: wgpu::BufferUsages::MAP_READ,
                    mapped_at_creation: false,
                })
            }),
        }
    }

    /// `work` was recorded into `encoder`: `marker` maps when it is submitted.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, marker: wgpu::Buffer, work: Work) {
        let mut unseen = self.unseen.lock().expect("not poisoned");
        // A callback run, even with an error (a lost device), says its work was submitted.
        unseen.retain(|unseen| !unseen.marker.settled() || unseen.marker.dropped());
        let callbacks = Callbacks::new(1);
        let (free, mapped) = (Arc::clone(&self.free), marker.clone());
        let callback = callbacks.callback(move || {
            mapped.unmap();
            free.lock().expect("not poisoned").push(mapped);
        });
        encoder.map_buffer_on_submit(&marker, wgpu::MapMode::Read, .., callback);
        unseen.push_back(Unseen {
            work,
            encoder: encoder_id(encoder),
            marker: callbacks,
            buffer: marker,
        });
    }

    /// `Ok` where `operation`, of kind `kind`, can run after all the recorded work it must
    /// follow: every step, unless in the encoder the operation records into; every
    /// checkpoint's copies too, where it writes the state they copy. Otherwise the first work
    /// that is not submitted: [`Error::DroppedStep`] for a step whose encoder was dropped
    /// (unless a restore replaces what those steps counted), [`Error::UnsubmittedStep`] or
    /// [`Error::UnsubmittedCheckpoint`] where it is still to be submitted. Polls the device
    /// without waiting for it.
    pub fn check(&self, context: &GpuContext, kind: Ahead, operation: &'static str) -> Result<()> {
        let unseen = self.unseen.lock().expect("not poisoned");
        if unseen.is_empty() {
            return Ok(());
        }
        let _ = context.device().poll(wgpu::PollType::Poll);
        for unseen in unseen.iter() {
            let follows = match (unseen.work, kind) {
                (Work::Checkpoint(_), Ahead::Write | Ahead::Restore) => true,
                (Work::Checkpoint(_), _) => false,
                (Work::Step(_), Ahead::Recorded(encoder)) => {
                    encoder != unseen.encoder || unseen.marker.dropped()
                }
                (Work::Step(_), _) => true,
            };
            if !follows {
                continue;
            }
            let outcome = unseen.marker.outcome();
            let pending =
                outcome.fired == 0 && !outcome.dropped && !mapping_requested(&unseen.buffer);
            match unseen.work {
                Work::Step(step) if outcome.dropped && kind != Ahead::Restore => {
                    return Err(Error::DroppedStep { step })
                }
                Work::Step(step) if pending => {
                    return Err(Error::UnsubmittedStep { step, operation })
                }
                Work::Checkpoint(after_step) if pending => {
                    return Err(Error::UnsubmittedCheckpoint {
                        after_step,
                        operation,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The first step recorded into an encoder dropped without being submitted, if any.
    pub fn dropped(&self) -> Option<u64> {
        let unseen = self.unseen.lock().expect("not poisoned");
        unseen.iter().find_map(|unseen| match unseen.work {
            Work::Step(step) if unseen.marker.dropped() => Some(step),
            _ => None,
        })
    }

    /// Forgets the recorded work (after a restore, whose state replaces what it counted).
    pub fn clear(&self) {
        self.unseen.lock().expect("not poisoned").clear();
    }
}
