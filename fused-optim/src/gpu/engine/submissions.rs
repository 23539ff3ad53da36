//! Which recorded steps have been submitted. The engine records steps into callers' encoders
//! and never sees the submit; what must follow a step on the GPU's timeline (a checkpoint's
//! copies, a restore's writes, a loss-scale reset, a step submitted on its own) must know it
//! was submitted. Each step recorded into a caller's encoder carries a marker: a 4-byte
//! mappable buffer the encoder maps on submit. No command uses it, so its mapping is ready at
//! the first poll after the submit, whatever the GPU is still running: a host-side signal, no
//! GPU work. An encoder dropped unsubmitted drops the mapping's callback uncalled, which says
//! so too.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::callbacks::Callbacks;
use crate::gpu::GpuContext;

/// A recorded step not yet seen submitted.
struct Unseen {
    step: u64,
    encoder: u64,
    marker: Arc<Callbacks>,
}

/// The steps recorded into callers' encoders whose submission the host has not seen yet.
#[derive(Default)]
pub(crate) struct Submissions {
    unseen: VecDeque<Unseen>,
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

    /// Step `step` was recorded into `encoder`: `marker` maps when it is submitted.
    pub fn record(&mut self, encoder: &mut wgpu::CommandEncoder, marker: wgpu::Buffer, step: u64) {
        // A callback run, even with an error (a lost device), says its step was submitted.
        self.unseen
            .retain(|unseen| !unseen.marker.settled() || unseen.marker.dropped());
        let callbacks = Callbacks::new(1);
        let (free, mapped) = (Arc::clone(&self.free), marker.clone());
        let callback = callbacks.callback(move || {
            mapped.unmap();
            free.lock().expect("not poisoned").push(mapped);
        });
        encoder.map_buffer_on_submit(&marker, wgpu::MapMode::Read, .., callback);
        self.unseen.push_back(Unseen {
            step,
            encoder: encoder_id(encoder),
            marker: callbacks,
        });
    }

    /// `Ok` where every recorded step has been submitted or is in encoder `within` (whose
    /// later commands follow it). Otherwise the first that is not: [`Error::DroppedStep`]
    /// where its encoder was dropped (unless `dropped_ran_nothing`, for a restore, which
    /// replaces what those steps counted), [`Error::UnsubmittedStep`] for `operation` where it
    /// is still to be submitted. Polls the device without waiting for it.
    pub fn check(
        &self,
        context: &GpuContext,
        within: Option<u64>,
        operation: &'static str,
        dropped_ran_nothing: bool,
    ) -> Result<()> {
        if self.unseen.is_empty() {
            return Ok(());
        }
        let _ = context.device().poll(wgpu::PollType::Poll);
        for unseen in &self.unseen {
            if Some(unseen.encoder) == within && !unseen.marker.dropped() {
                continue;
            }
            let outcome = unseen.marker.outcome();
            if outcome.dropped && !dropped_ran_nothing {
                return Err(Error::DroppedStep { step: unseen.step });
            }
            if outcome.fired == 0 && !outcome.dropped {
                return Err(Error::UnsubmittedStep {
                    step: unseen.step,
                    operation,
                });
            }
        }
        Ok(())
    }

    /// The first step recorded into an encoder dropped without being submitted, if any.
    pub fn dropped(&self) -> Option<u64> {
        self.unseen
            .iter()
            .find(|unseen| unseen.marker.dropped())
            .map(|unseen| unseen.step)
    }

    /// Forgets every recorded step (after a restore, whose state replaces theirs).
    pub fn clear(&mut self) {
        self.unseen.clear();
    }
}
