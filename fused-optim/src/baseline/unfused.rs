//! The unfused chain: an update rule run the way a tensor framework without fusion runs it,
//! one elementwise kernel per operation (`elementwise.wgsl`, beside this file), each reading and
//! writing whole tensors. Each operation is a kernel of its own over a (destination, source)
//! pair (a [`StepKernel`], not a rule), run through the same engine as the optimizers (windows, per-step values, checks,
//! cached bind groups). The benchmark times it beside the fused kernel; the tests hold its
//! results to the CPU twin, so the comparison is between two correct implementations.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::Precision;
use crate::gpu::{state_buffer, Engine, GpuContext, Reduction, Span, StepKernel};

use crate::rule::program::{Elementwise, Op, Operand, Program, Unfused};
use crate::rule::{declare_scalars, find_state, try_set_lr, StateRef};

/// One elementwise operation as a kernel: the engine binds its destination as the params and
/// its source as the grads. Operations without a source get the grads bound and never read
/// them: the kernel brings its own entry point, which loads only the operands its operation
/// uses, as a framework's kernel would.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ElementwiseOp {
    kind: Elementwise,
    scalar: f32,
}

declare_scalars! {
    /// `elementwise.wgsl`'s `Scalars`.
    pub struct ElementwiseScalars {
        /// The operation's scalar operand `s` (0 where it has none).
        scalar: f32,
    }
}

/// An operation is a kernel, not a rule: its own entry point reads only the operands it uses,
/// and an integer override picks the operation.
impl StepKernel for ElementwiseOp {
    type Scalars = ElementwiseScalars;
    const SHADER: &'static str = include_str!("elementwise.wgsl");
    const OWN_ENTRY_POINT: bool = true;
    const STATE_SLOTS: &'static [&'static str] = &[];
    const NON_NEGATIVE: &'static [&'static str] = &[];

    fn name(&self) -> &'static str {
        "unfused op"
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn keeps_state(&self, _name: &str) -> bool {
        false
    }

    fn initial_state(&self, _name: &str) -> f32 {
        0.0
    }

    fn pipeline_constants(&self) -> Vec<(&'static str, u32)> {
        vec![("OP", self.kind as u32)]
    }

    fn l2_weight_decay(&self) -> f64 {
        0.0
    }

    fn initial_host_state(&self) -> Vec<f64> {
        Vec::new()
    }

    fn advance_host_state(&self, _t: u64, _host: &mut [f64]) {}

    fn scalars(&self, _t: u64, _host: &[f64]) -> ElementwiseScalars {
        ElementwiseScalars {
            scalar: self.scalar,
        }
    }
}

/// Identifies an operation's engine: what it computes, what it writes and what it reads.
type OpKey = (Elementwise, Operand, Operand);

fn op_key(op: &Op) -> OpKey {
    (op.kind, op.dst, op.src.unwrap_or(Operand::Grad))
}

/// A rule run as its unfused chain over caller buffers of `len` elements, with its own state
/// and scratch tensors. Every step is submitted; it is a benchmark baseline, not an optimizer
/// to train with.
pub struct UnfusedChain<R: Unfused> {
    context: GpuContext,
    rule: R,
    len: u64,
    steps: u64,
    /// The rule's host state as of step `steps`.
    host: Vec<f64>,
    span: Span,
    state: Vec<wgpu::Buffer>,
    temps: Vec<wgpu::Buffer>,
    /// One engine per distinct operation of the programs run so far, over its operand pair.
    ops: HashMap<OpKey, Engine<ElementwiseOp>>,
}

impl<R: Unfused> UnfusedChain<R> {
    /// Validates `rule`, builds an engine for each operation of its program and allocates its
    /// state and scratch tensors for `len` elements.
    pub fn new(context: &GpuContext, rule: R, len: usize) -> Result<Self> {
        rule.validate()?;
        if len == 0 {
            return Err(Error::EmptyParams);
        }
        let len = len as u64;
        let limits = context.limits();
        if len.saturating_mul(4) > limits.max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "an unfused-chain tensor",
                bytes: len.saturating_mul(4),
                limit: limits.max_buffer_size,
            });
        }
        let span = Span {
            target: 0,
            group: 0,
            start: 0,
            end: len,
            first: 0,
        };
        let state = context.scoped("allocating the unfused chain's state", || {
            R::STATE_SLOTS
                .iter()
                .map(|name| {
                    let initial = |_: &Span| rule.initial_state(name);
                    match rule.keeps_state(name) {
                        true => state_buffer(context, name, len, initial, &[&span]),
                        false => state_buffer(context, name, 4, initial, &[]),
                    }
                })
                .collect()
        })?;
        let mut chain = Self {
            context: context.clone(),
            host: rule.initial_host_state(),
            rule,
            len,
            steps: 0,
            span,
            state,
            temps: Vec::new(),
            ops: HashMap::new(),
        };
        // Step 1 may differ from the rest (SGD sets its momentum buffer), and so may a few
        // more (RAdam rectifies from its sixth); what a later step needs is made when it
        // comes.
        for t in [1, 2] {
            let mut program = Program::default();
            chain.rule.unfused(t, &chain.host, &mut program);
            chain.prepare(&program)?;
        }
        Ok(chain)
    }

    /// Makes the engines and scratch tensors `program` needs that the chain lacks.
    fn prepare(&mut self, program: &Program) -> Result<()> {
        for op in &program.ops {
            if let std::collections::hash_map::Entry::Vacant(entry) = self.ops.entry(op_key(op)) {
                let rule = ElementwiseOp {
                    kind: op.kind,
                    scalar: op.scalar,
                };
                let engine = Engine::new(
                    &self.context,
                    vec![rule],
                    vec![Precision::default()],
                    vec![self.len],
                    &[self.span],
                )?;
                entry.insert(engine);
            }
        }
        while self.temps.len() < program.temps() {
            let (context, len) = (&self.context, self.len);
            let temp = context.scoped("allocating an unfused-chain temporary", || {
                state_buffer(context, "unfused temp", len, |_| 0.0, &[])
            })?;
            self.temps.push(temp);
        }
        Ok(())
    }

    /// Changes the learning rate from the next step on; a rejected value leaves the old one.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// Bytes one step moves through memory: per operation, every element of each operand it
    /// reads and of the tensor it writes (an in-place op reads and writes its destination).
    pub fn bytes_per_step(&self) -> u64 {
        let mut program = Program::default();
        self.rule
            .unfused(self.steps.max(1) + 1, &self.host, &mut program);
        program
            .ops
            .iter()
            .map(|op| {
                let tensors = match op.kind {
                    Elementwise::Add
                    | Elementwise::Sub
                    | Elementwise::Mul
                    | Elementwise::Div
                    | Elementwise::Max => 3,
                    _ => 2,
                };
                tensors * self.len * 4
            })
            .sum()
    }

    /// Kernels one step launches: one per operation and window, plus one per operation for
    /// a window that ends mid-vec4.
    pub fn dispatches_per_step(&self) -> usize {
        let mut program = Program::default();
        self.rule
            .unfused(self.steps.max(1) + 1, &self.host, &mut program);
        let per_op = self.ops.values().next().map_or(0, Engine::dispatches);
        program.ops.len() * per_op
    }

    /// Reads a state back by PyTorch name. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        pollster::block_on(self.read_state_async(name))
    }

    /// [`Self::read_state`] as a future, for a browser; natively it waits in place, as that does.
    pub async fn read_state_async(&self, name: &str) -> Result<Vec<f32>> {
        match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => self.context.download_async(&self.state[slot]).await,
            StateRef::Host(index) => Ok(vec![self.host[index] as f32]),
            StateRef::Step => Ok(vec![self.steps as f32]),
        }
    }

    /// Records and submits one step.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.step_timed(params, grads, None)
    }

    /// Records one step, one compute pass per operation, with `timestamps` written at the start
    /// of the first pass and the end of the last (for the benchmark), and submits it.
    pub fn step_timed(
        &mut self,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.context.ensure_alive()?;
        if params == grads {
            return Err(Error::AliasedBuffers {
                first: "params".into(),
                second: "grads".into(),
            });
        }
        for (buffer, name) in [(params, "params"), (grads, "grads")] {
            if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::MissingUsage {
                    buffer: name.into(),
                    usage: "STORAGE",
                });
            }
            if buffer.size() != self.len * 4 {
                return Err(Error::StateMismatch {
                    tensor: name.into(),
                    expected: self.len,
                    got: buffer.size() / 4,
                });
            }
        }
        let t = self.steps + 1;
        let mut host = self.host.clone();
        self.rule.advance_host_state(t, &mut host);
        let mut program = Program::default();
        self.rule.unfused(t, &host, &mut program);
        self.prepare(&program)?;
        let resolve = |operand: Operand| match operand {
            Operand::Param => params,
            Operand::Grad => grads,
            Operand::State(slot) => &self.state[slot],
            Operand::Temp(k) => &self.temps[k],
        };
        let last = program.ops.len().saturating_sub(1);
        let mut encoder = self
            .context
            .device()
            .create_command_encoder(&Default::default());
        for (index, op) in program.ops.iter().enumerate() {
            // wgpu rejects timestamp writes with neither index, so the passes in between
            // get none.
            let writes = timestamps
                .as_ref()
                .map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: t.query_set,
                    beginning_of_pass_write_index: t
                        .beginning_of_pass_write_index
                        .filter(|_| index == 0),
                    end_of_pass_write_index: t.end_of_pass_write_index.filter(|_| index == last),
                })
                .filter(|t| {
                    t.beginning_of_pass_write_index.is_some() || t.end_of_pass_write_index.is_some()
                });
            let key = op_key(op);
            let engine = self
                .ops
                .get_mut(&key)
                .expect("an engine for every operation");
            engine.groups[0].scalar = op.scalar;
            let pair = (resolve(key.1), resolve(key.2));
            engine.record(&mut encoder, &[pair], writes, Reduction::Own)?;
        }
        let context = self.context.clone();
        context.scoped("submitting an unfused step", || {
            context.queue().submit([encoder.finish()]);
        })?;
        self.host = host;
        self.steps = t;
        Ok(())
    }
}
