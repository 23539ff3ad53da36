//! [`CpuOptimizer`]: the CPU twin of [`Optimizer`](super::Optimizer), the same rule, step
//! count and state on host slices, performing the shader's f32 operations in its order.

use crate::error::{Error, Result};
use crate::rule::{find_state, state_names, try_set_lr, twin_element, StateRef, UpdateRule};

/// A host state vector of `len` copies of `value`, or `HostOutOfMemory` where the allocator
/// refuses (an absurd length), instead of aborting the process.
fn host_state(len: usize, value: f32) -> Result<Vec<f32>> {
    let mut state = Vec::new();
    state
        .try_reserve_exact(len)
        .map_err(|_| Error::HostOutOfMemory {
            bytes: (len as u64).saturating_mul(4),
        })?;
    state.resize(len, value);
    Ok(state)
}

/// The CPU twin of [`Optimizer`](crate::Optimizer): the same rule, step count and state, on host slices.
#[derive(Clone, Debug)]
pub struct CpuOptimizer<R: UpdateRule> {
    rule: R,
    len: usize,
    steps: u64,
    /// The rule's host state (`UpdateRule::HOST_STATE`) as of step `steps`.
    host: Vec<f64>,
    /// One vector per `R::STATE_SLOTS`, empty for slots this configuration does not keep.
    state: Vec<Vec<f32>>,
}

impl<R: UpdateRule> CpuOptimizer<R> {
    /// Validates `rule` and allocates its state for `len` elements on the host.
    pub fn new(rule: R, len: usize) -> Result<Self> {
        rule.validate()?;
        if len == 0 {
            return Err(Error::EmptyParams);
        }
        let state = R::STATE_SLOTS
            .iter()
            .map(|name| match rule.keeps_state(name) {
                true => host_state(len, rule.initial_state(name)),
                false => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            host: rule.initial_host_state(),
            rule,
            len,
            steps: 0,
            state,
        })
    }

    /// The rule and its hyperparameters.
    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// Steps taken so far (PyTorch's `state["step"]`).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// The states this twin keeps, by PyTorch name.
    pub fn state_names(&self) -> Vec<&'static str> {
        state_names(std::slice::from_ref(&self.rule))
    }

    /// Changes the learning rate from the next step on; a rejected value leaves the old one.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// A state by PyTorch name; `step` reads as one element.
    pub fn state(&self, name: &str) -> Result<Vec<f32>> {
        Ok(match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => self.state[slot].clone(),
            StateRef::Host(index) => vec![self.host[index] as f32],
            StateRef::Step => vec![self.steps as f32],
        })
    }

    /// One step of the twin, element by element in the shader's order of operations
    /// (the prelude's `main`, then the rule's `update`).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        let (params_len, grads_len) = (params.len() as u64, grads.len() as u64);
        if params_len != grads_len {
            return Err(Error::LengthMismatch {
                tensor: "params".into(),
                params: params_len,
                grads: grads_len,
            });
        }
        if params_len != self.len as u64 {
            return Err(Error::StateMismatch {
                tensor: "params".into(),
                expected: self.len as u64,
                got: params_len,
            });
        }
        let t = self.steps + 1;
        let l2 = self.rule.l2_weight_decay() as f32;
        let mut host = self.host.clone();
        self.rule.advance_host_state(t, &mut host);
        let scalars = self.rule.scalars(t, &host);
        let mut values = vec![0.0; self.state.len()];
        for (i, (param, &grad)) in params.iter_mut().zip(grads).enumerate() {
            for (value, slot) in values.iter_mut().zip(&self.state) {
                *value = slot.get(i).copied().unwrap_or(0.0);
            }
            twin_element(&self.rule, l2, &scalars, param, grad, &mut values);
            for (value, slot) in values.iter().zip(&mut self.state) {
                if let Some(stored) = slot.get_mut(i) {
                    *stored = *value;
                }
            }
        }
        self.host = host;
        self.steps = t;
        Ok(())
    }
}
