//! The unfused chain: an update rule run the way a tensor framework without fusion runs it,
//! one elementwise kernel per operation (shaders/elementwise.wgsl), each reading and writing
//! whole tensors. The benchmark times it beside the fused kernel; the tests hold its results to
//! the CPU twin, so the comparison is between two correct implementations.

use std::collections::HashMap;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::context::GpuContext;
use crate::engine::{find_state, state_buffer, try_set_lr, StateRef};
use crate::error::{Error, Result};
use crate::kernel::{
    assemble, dispatch_grid, Kernel, KernelKey, KernelShape, Lanes, UpdateRule, ValueSlots,
};
use crate::plan::{dispatches, windows, Dispatch, Span, Window};

pub(crate) const SHADER: &str = include_str!("../shaders/elementwise.wgsl");

/// A tensor an operation reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    Param,
    Grad,
    /// The rule's state slot, in `STATE_SLOTS` order.
    State(usize),
    /// A scratch tensor of the chain's own, as a framework allocates for intermediate results.
    Temp(usize),
}

/// One elementwise kernel. The discriminants are the `OP` cases of shaders/elementwise.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elementwise {
    /// dst += src
    Add = 0,
    /// dst -= src
    Sub = 1,
    /// dst *= src
    Mul = 2,
    /// dst /= src
    Div = 3,
    /// dst = max(dst, src)
    Max = 4,
    /// dst *= s
    MulScalar = 5,
    /// dst /= s
    DivScalar = 6,
    /// dst += s
    AddScalar = 7,
    /// dst = sqrt(dst)
    SqrtInPlace = 8,
    /// dst = src
    Copy = 9,
    /// dst = sqrt(src)
    Sqrt = 10,
    /// dst = src * src
    Square = 11,
    /// dst = src * s
    Scale = 12,
}

#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub kind: Elementwise,
    pub dst: Operand,
    pub src: Option<Operand>,
    pub scalar: f32,
}

/// The operations of one step, in order: what [`UpdateRule::unfused`] writes.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub ops: Vec<Op>,
}

impl Program {
    fn push(&mut self, kind: Elementwise, dst: Operand, src: Option<Operand>, scalar: f32) {
        debug_assert!(src != Some(dst), "{kind:?}: one tensor bound twice");
        self.ops.push(Op {
            kind,
            dst,
            src,
            scalar,
        });
    }

    pub fn add(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Add, dst, Some(src), 0.0);
    }
    pub fn sub(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Sub, dst, Some(src), 0.0);
    }
    pub fn mul(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Mul, dst, Some(src), 0.0);
    }
    pub fn div(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Div, dst, Some(src), 0.0);
    }
    pub fn max(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Max, dst, Some(src), 0.0);
    }
    pub fn mul_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::MulScalar, dst, None, s);
    }
    pub fn div_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::DivScalar, dst, None, s);
    }
    pub fn add_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::AddScalar, dst, None, s);
    }
    pub fn sqrt_in_place(&mut self, dst: Operand) {
        self.push(Elementwise::SqrtInPlace, dst, None, 0.0);
    }
    pub fn copy(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Copy, dst, Some(src), 0.0);
    }
    pub fn sqrt(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Sqrt, dst, Some(src), 0.0);
    }
    pub fn square(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Square, dst, Some(src), 0.0);
    }
    pub fn scale(&mut self, dst: Operand, src: Operand, s: f32) {
        self.push(Elementwise::Scale, dst, Some(src), s);
    }

    /// The prelude's gradient (shaders/common.wgsl): negated when maximizing, plus the L2 term
    /// `weight_decay * p`. Uses `Temp(0)` when it has to compute anything.
    pub fn gradient(&mut self, maximize: bool, weight_decay: f32) -> Operand {
        let g = Operand::Temp(0);
        match (maximize, weight_decay != 0.0) {
            (false, false) => return Operand::Grad,
            (true, false) => self.scale(g, Operand::Grad, -1.0),
            (maximize, true) => {
                self.scale(g, Operand::Param, weight_decay);
                match maximize {
                    true => self.sub(g, Operand::Grad),
                    false => self.add(g, Operand::Grad),
                }
            }
        }
        g
    }

    /// Scratch tensors the program uses.
    fn temps(&self) -> usize {
        self.ops
            .iter()
            .flat_map(|op| [Some(op.dst), op.src])
            .filter_map(|operand| match operand {
                Some(Operand::Temp(k)) => Some(k + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// The values of one dispatch (`Step` in shaders/elementwise.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct OpUniform {
    begin: u32,
    end: u32,
    scalar: f32,
    pad: u32,
}

/// A rule run as its unfused chain over caller buffers of `len` elements, with its own state
/// and scratch tensors. Every step is submitted; it is a benchmark baseline, not an optimizer
/// to train with.
pub struct UnfusedChain<R: UpdateRule> {
    context: GpuContext,
    rule: R,
    len: u64,
    steps: u64,
    state: Vec<wgpu::Buffer>,
    temps: Vec<wgpu::Buffer>,
    placeholder: wgpu::Buffer,
    windows: Vec<Window>,
    /// Each window's vector dispatch and scalar tail; every operation runs all of them.
    dispatches: Vec<Dispatch>,
    values: ValueSlots,
    workgroups_per_dimension: u32,
    kernels: HashMap<(Elementwise, Lanes), Arc<Kernel>>,
    bound: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Keyed by the operation's operands and the dispatch.
    bind_groups: HashMap<(Operand, Option<Operand>, usize), wgpu::BindGroup>,
}

impl<R: UpdateRule> UnfusedChain<R> {
    pub fn new(context: &GpuContext, rule: R, len: usize) -> Result<Self> {
        rule.validate()?;
        if len == 0 {
            return Err(Error::EmptyParams);
        }
        let len = len as u64;
        // Step 1 may differ from the rest (SGD sets its momentum buffer); later steps are alike.
        let programs = [1, 2].map(|t| {
            let mut program = Program::default();
            rule.unfused(t, &mut program);
            program
        });
        let temps = programs.iter().map(Program::temps).max().unwrap_or(0);
        let most_ops = programs.iter().map(|p| p.ops.len()).max().unwrap_or(0);
        let limits = context.limits();
        if len.saturating_mul(4) > limits.max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "an unfused-chain tensor",
                bytes: len.saturating_mul(4),
                limit: limits.max_buffer_size,
            });
        }
        let dispatch = context.dispatch_limits();
        let span = Span {
            target: 0,
            group: 0,
            start: 0,
            end: len,
        };
        let windows = windows(
            std::slice::from_ref(&span),
            dispatch.window_elements,
            context.binding_elements(),
            context.alignment_elements(),
        );
        let dispatches = dispatches(&windows);
        let values_size = std::mem::size_of::<OpUniform>() as u64;
        let values = context.step_values_for(values_size);
        let kinds: std::collections::HashSet<Elementwise> = programs
            .iter()
            .flat_map(|program| program.ops.iter().map(|op| op.kind))
            .collect();
        let lanes: std::collections::HashSet<Lanes> = dispatches.iter().map(|d| d.lanes).collect();
        let kernels = kinds
            .iter()
            .flat_map(|&kind| lanes.iter().map(move |&lanes| (kind, lanes)))
            .map(|(kind, lanes)| {
                let key = KernelKey {
                    shader: SHADER,
                    lanes,
                    values,
                    constants: vec![("OP", kind as u32)],
                };
                let kernel = context.kernel(key, || {
                    Kernel::compile(
                        context.device(),
                        &assemble(SHADER, lanes, values),
                        KernelShape {
                            label: "elementwise",
                            overrides: &[("OP", kind as u32 as f64)],
                            values_size,
                            state_slots: 0,
                            lanes,
                            values,
                        },
                    )
                })?;
                Ok(((kind, lanes), kernel))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let device = context.device();
        let slots = most_ops * dispatches.len();
        let (values, placeholder, state, temps) =
            context.scoped("allocating the unfused chain", || {
                // Zeroed tensors of the chain's own, made like the engine's state.
                let tensor =
                    |label: &str, len: u64| state_buffer(context, label, len, |_| 0.0, &[]);
                let values = ValueSlots::new(device, values, values_size, slots);
                let state: Vec<wgpu::Buffer> = R::STATE_SLOTS
                    .iter()
                    .map(|name| match rule.keeps_state(name) {
                        true => {
                            state_buffer(context, name, len, |_| rule.initial_state(name), &[&span])
                        }
                        false => tensor(name, 4),
                    })
                    .collect();
                let temps = (0..temps).map(|_| tensor("unfused temp", len)).collect();
                (values, tensor("unused operand", 4), state, temps)
            })?;
        Ok(Self {
            context: context.clone(),
            rule,
            len,
            steps: 0,
            state,
            temps,
            placeholder,
            windows,
            dispatches,
            values,
            workgroups_per_dimension: dispatch.workgroups_per_dimension,
            kernels,
            bound: None,
            bind_groups: HashMap::new(),
        })
    }

    /// Changes the learning rate from the next step on; a rejected value leaves the old one.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        try_set_lr(&mut self.rule, lr)
    }

    /// Bytes one step moves through memory: per operation, every element of each operand it
    /// reads and of the tensor it writes (an in-place op reads and writes its destination).
    pub fn bytes_per_step(&self) -> u64 {
        let mut program = Program::default();
        self.rule.unfused(self.steps.max(1) + 1, &mut program);
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
        self.rule.unfused(self.steps.max(1) + 1, &mut program);
        program.ops.len() * self.dispatches.len()
    }

    /// Reads a state back by PyTorch name. Waits for the GPU.
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        match find_state(&self.rule, name)? {
            StateRef::Slot(slot) => self.context.download(&self.state[slot]),
            StateRef::Step => Ok(vec![self.steps as f32]),
        }
    }

    /// Records and submits one step.
    pub fn step(&mut self, params: &wgpu::Buffer, grads: &wgpu::Buffer) -> Result<()> {
        self.submit(params, grads, None)
    }

    /// Records one step as a single compute pass (with `timestamps` around it, for the
    /// benchmark) and submits it.
    pub(crate) fn submit(
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
        if !matches!(&self.bound, Some((p, g)) if p == params && g == grads) {
            self.bind_groups.clear();
            self.bound = Some((params.clone(), grads.clone()));
        }
        let t = self.steps + 1;
        let mut program = Program::default();
        self.rule.unfused(t, &mut program);
        self.bind(&program, params, grads)?;
        let step = self.values.layout(program.ops.iter().flat_map(|op| {
            self.dispatches.iter().map(move |d| {
                bytemuck::bytes_of(&OpUniform {
                    begin: d.begin as u32,
                    end: d.end as u32,
                    scalar: op.scalar,
                    pad: 0,
                })
                .to_vec()
            })
        }));
        let context = self.context.clone();
        let mut encoder = context.device().create_command_encoder(&Default::default());
        self.values.stage(&context, &mut encoder, &step)?;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("unfused chain"),
                timestamp_writes: timestamps,
            });
            let slots = program
                .ops
                .iter()
                .flat_map(|op| self.dispatches.iter().enumerate().map(move |d| (op, d)));
            for (slot, (op, (index, d))) in slots.enumerate() {
                pass.set_pipeline(&self.kernels[&(op.kind, d.lanes)].pipeline);
                let group = &self.bind_groups[&(op.dst, op.src, index)];
                self.values.set(&mut pass, slot, group, &step);
                let (x, y) = dispatch_grid(d.len(), self.workgroups_per_dimension);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        context.scoped("submitting an unfused step", || {
            context.queue().submit([encoder.finish()]);
        })?;
        self.steps = t;
        Ok(())
    }

    /// Makes the bind groups `program` needs that are not cached yet.
    fn bind(
        &mut self,
        program: &Program,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        let missing: Vec<(Operand, Option<Operand>, usize)> = program
            .ops
            .iter()
            .flat_map(|op| (0..self.dispatches.len()).map(move |d| (op.dst, op.src, d)))
            .filter(|key| !self.bind_groups.contains_key(key))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let resolve = |operand: Operand| match operand {
            Operand::Param => params,
            Operand::Grad => grads,
            Operand::State(slot) => &self.state[slot],
            Operand::Temp(k) => &self.temps[k],
        };
        let created = self.context.scoped("binding the unfused chain", || {
            missing
                .iter()
                .map(|&(dst, src, index)| {
                    let d = &self.dispatches[index];
                    let window = &self.windows[d.window];
                    let slice = |buffer| wgpu::BufferBinding {
                        buffer,
                        offset: window.offset * 4,
                        size: wgpu::BufferSize::new(d.binding_bytes()),
                    };
                    let read = match src {
                        Some(src) => slice(resolve(src)),
                        None => self.placeholder.as_entire_buffer_binding(),
                    };
                    // Every operation's kernel of these lanes has the same layout.
                    let kernel = self
                        .kernels
                        .iter()
                        .find(|((_, lanes), _)| *lanes == d.lanes)
                        .map(|(_, kernel)| kernel)
                        .expect("a kernel for every dispatch's lanes");
                    let group = kernel.bind_group(
                        self.context.device(),
                        "unfused op",
                        self.values.binding(),
                        [slice(resolve(dst)), read],
                    );
                    ((dst, src, index), group)
                })
                .collect::<Vec<_>>()
        })?;
        self.bind_groups.extend(created);
        Ok(())
    }
}
