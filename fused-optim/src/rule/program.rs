//! A step as plain data: the chain of elementwise operations a framework without fusion runs,
//! one kernel per operation over whole tensors. Rules write it ([`Unfused`]), beside their
//! kernel; the unfused baseline interprets it. No GPU here.

use crate::rule::UpdateRule;

/// A rule's step as the unfused chain of elementwise operations a framework without fusion
/// would run: what the benchmark's unfused baseline times against the fused kernel. Apart
/// from [`UpdateRule`], which a rule is without it; the registry asks every rule for one.
pub trait Unfused: UpdateRule {
    /// Step `t`'s operations, appended to `program`. Starts from [`Program::gradient`], the
    /// prelude's gradient, and uses the same scalars as the kernel (`host` as for
    /// [`UpdateRule::scalars`]).
    fn unfused(&self, t: u64, host: &[f64], program: &mut Program);
}

/// A tensor an operation reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The parameters, updated in place.
    Param,
    /// The gradients, read only.
    Grad,
    /// The rule's state slot, in `STATE_SLOTS` order.
    State(usize),
    /// A scratch tensor of the chain's own, as a framework allocates for intermediate results.
    Temp(usize),
}

/// One elementwise kernel. The discriminants are the `OP` cases of
/// `src/baseline/elementwise.wgsl`.
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
    /// dst = |src|
    Abs = 13,
    /// dst = sign(src): 1, -1, or 0 for a zero
    Sign = 14,
}

/// One operation of a [`Program`]: an elementwise kernel over whole tensors.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// What it computes.
    pub kind: Elementwise,
    /// The tensor it writes (and reads, for in-place operations).
    pub dst: Operand,
    /// The tensor it reads, for operations with two operands.
    pub src: Option<Operand>,
    /// Its scalar operand `s` (0 where it has none).
    pub scalar: f32,
}

/// The operations of one step, in order: what [`Unfused::unfused`] writes.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// The operations, in the order they run.
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

    /// `dst += src`
    pub fn add(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Add, dst, Some(src), 0.0);
    }
    /// `dst -= src`
    pub fn sub(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Sub, dst, Some(src), 0.0);
    }
    /// `dst *= src`
    pub fn mul(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Mul, dst, Some(src), 0.0);
    }
    /// `dst /= src`
    pub fn div(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Div, dst, Some(src), 0.0);
    }
    /// `dst = max(dst, src)`
    pub fn max(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Max, dst, Some(src), 0.0);
    }
    /// `dst *= s`
    pub fn mul_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::MulScalar, dst, None, s);
    }
    /// `dst /= s`
    pub fn div_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::DivScalar, dst, None, s);
    }
    /// `dst += s`
    pub fn add_scalar(&mut self, dst: Operand, s: f32) {
        self.push(Elementwise::AddScalar, dst, None, s);
    }
    /// `dst = sqrt(dst)`
    pub fn sqrt_in_place(&mut self, dst: Operand) {
        self.push(Elementwise::SqrtInPlace, dst, None, 0.0);
    }
    /// `dst = src`
    pub fn copy(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Copy, dst, Some(src), 0.0);
    }
    /// `dst = sqrt(src)`
    pub fn sqrt(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Sqrt, dst, Some(src), 0.0);
    }
    /// `dst = src * src`
    pub fn square(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Square, dst, Some(src), 0.0);
    }
    /// `dst = src * s`
    pub fn scale(&mut self, dst: Operand, src: Operand, s: f32) {
        self.push(Elementwise::Scale, dst, Some(src), s);
    }
    /// `dst = |src|`
    pub fn abs(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Abs, dst, Some(src), 0.0);
    }
    /// `dst = sign(src)`
    pub fn sign(&mut self, dst: Operand, src: Operand) {
        self.push(Elementwise::Sign, dst, Some(src), 0.0);
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
    pub fn temps(&self) -> usize {
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
