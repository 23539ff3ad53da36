//! Waiting for the callbacks of `map_buffer_on_submit` requests when any thread may run them.
//! A callback runs in whichever thread's poll (or submit) finds its mapping ready, after that
//! poll has released wgpu's locks: a thread whose own poll returned can still find it pending
//! because another thread is about to run it. So a waiter blocks on a condition variable the
//! callbacks signal, for a short while, rather than trusting its own poll. A request whose
//! encoder was dropped unsubmitted drops its callback uncalled, which says so at once.
//! In a browser there is one thread and the page's event loop runs the callbacks: a waiter
//! awaits them ([`Callbacks::settled_async`]) once it knows the mapping was requested.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
#[cfg(not(target_arch = "wasm32"))]
use std::time::{Duration, Instant};

/// How long a waiter gives callbacks it did not run itself to finish running elsewhere: far
/// beyond a callback's few instructions and a loaded machine's scheduling delay, and paid
/// only by a call that then reports its encoder unsubmitted.
#[cfg(not(target_arch = "wasm32"))]
const PATIENCE: Duration = Duration::from_secs(1);

/// What has become of a set of callbacks.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Callbacks run, successfully or not.
    pub fired: usize,
    /// The first error a callback reported.
    pub error: Option<String>,
    /// Whether a callback was dropped uncalled: its encoder was never submitted.
    pub dropped: bool,
}

/// The callbacks of `expected` mapping requests, shared with those who wait for them.
pub(crate) struct Callbacks {
    outcome: Mutex<Outcome>,
    changed: Condvar,
    /// Those awaiting the outcome ([`Callbacks::settled_async`]).
    wakers: Mutex<Vec<Waker>>,
    expected: usize,
}

/// Held by one callback: marks it dropped if it is dropped without having run.
struct Pending {
    callbacks: Arc<Callbacks>,
    fired: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.fired {
            self.callbacks.update(|outcome| outcome.dropped = true);
        }
    }
}

impl Callbacks {
    /// The callbacks of `expected` requests, none run yet.
    pub fn new(expected: usize) -> Arc<Self> {
        Arc::new(Self {
            outcome: Mutex::default(),
            changed: Condvar::new(),
            wakers: Mutex::default(),
            expected,
        })
    }

    /// A callback for one request: records its result, then runs `then` on success.
    pub fn callback(
        self: &Arc<Self>,
        then: impl FnOnce() + wgpu::WasmNotSend + 'static,
    ) -> impl FnOnce(Result<(), wgpu::BufferAsyncError>) + wgpu::WasmNotSend + 'static {
        let mut pending = Pending {
            callbacks: Arc::clone(self),
            fired: false,
        };
        move |result| {
            pending.fired = true;
            let ok = result.is_ok();
            pending.callbacks.update(|outcome| {
                outcome.fired += 1;
                if let Err(error) = result {
                    outcome.error.get_or_insert(error.to_string());
                }
            });
            if ok {
                then();
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut Outcome)) {
        change(&mut self.outcome.lock().expect("not poisoned"));
        self.changed.notify_all();
        // Woken with the lock released: a waker may poll at once.
        let wakers = std::mem::take(&mut *self.wakers.lock().expect("not poisoned"));
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether every callback has run, or one failed or was dropped.
    pub fn settled(&self) -> bool {
        self.is_settled(&self.outcome.lock().expect("not poisoned"))
    }

    /// Whether a callback was dropped uncalled: its encoder was dropped unsubmitted.
    pub fn dropped(&self) -> bool {
        self.outcome.lock().expect("not poisoned").dropped
    }

    fn is_settled(&self, outcome: &Outcome) -> bool {
        outcome.fired == self.expected || outcome.error.is_some() || outcome.dropped
    }

    /// Resolves once every callback has run, or one failed or was dropped: for callbacks that
    /// will run (their mappings were requested), never for an encoder still unsubmitted.
    pub async fn settled_async(&self) {
        std::future::poll_fn(|context| {
            let outcome = self.outcome.lock().expect("not poisoned");
            if self.is_settled(&outcome) {
                return std::task::Poll::Ready(());
            }
            // Registered under the outcome's lock, so no update is missed.
            let mut wakers = self.wakers.lock().expect("not poisoned");
            if !wakers.iter().any(|waker| waker.will_wake(context.waker())) {
                wakers.push(context.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The outcome as it stands: one thread runs everything in a browser, so no callback is
    /// running elsewhere.
    #[cfg(target_arch = "wasm32")]
    pub fn outcome(&self) -> MutexGuard<'_, Outcome> {
        self.outcome.lock().expect("not poisoned")
    }

    /// The outcome once settled, or as it stands after [`PATIENCE`] for callbacks that
    /// another thread may be running.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn outcome(&self) -> MutexGuard<'_, Outcome> {
        let deadline = Instant::now() + PATIENCE;
        let mut outcome = self.outcome.lock().expect("not poisoned");
        while !self.is_settled(&outcome) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            outcome = self
                .changed
                .wait_timeout(outcome, left)
                .expect("not poisoned")
                .0;
        }
        outcome
    }
}

/// Whether `buffer`'s mapping has been requested, the map still to come: in a browser, how a
/// mapping on submit shows its encoder was submitted before the GPU has done its work.
/// Natively a requested mapping resolves at the device's next poll, so never.
pub(crate) fn mapping_requested(buffer: &wgpu::Buffer) -> bool {
    #[cfg(target_arch = "wasm32")]
    return buffer.as_webgpu().is_some_and(|buffer| {
        wasm_bindgen::JsValue::from(buffer.map_state())
            .as_string()
            .as_deref()
            == Some("pending")
    });
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = buffer;
        false
    }
}
