//! Every operation, described once: its parameters, how it infers its output
//! shape and dtype from its inputs ([`Primitive::infer`]), and its fusion
//! class ([`Primitive::class`]). A backend runs it
//! ([`crate::backend::Backend::eval`] for one primitive, its executable for
//! a compiled program); each backend dispatches on this enum in one place.
//!
//! Primitives take inputs of the dtypes they need: the user-facing functions
//! in [`crate::ops`] insert [`Primitive::AsType`] nodes to promote operands, so
//! kernels never mix dtypes.

use crate::dtype::DType;
use crate::error::{shape_str, Error, Result};
use crate::layout::Layout;
use crate::shape::{broadcast_shapes, check_broadcast_to, check_size, numel_checked};

/// Elementwise operations of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sign,
    Sqrt,
    Rsqrt,
    Square,
    Reciprocal,
    Exp,
    Expm1,
    Log,
    Log1p,
    Log2,
    Log10,
    Sin,
    Cos,
    Tan,
    Tanh,
    Sigmoid,
    Erf,
    Floor,
    Ceil,
    /// Round half to even, as NumPy and MLX.
    Round,
    LogicalNot,
    IsNan,
    IsInf,
    IsFinite,
}

impl UnaryOp {
    /// Every unary op, in declaration order.
    pub const ALL: [UnaryOp; 26] = {
        use UnaryOp::*;
        [
            Neg, Abs, Sign, Sqrt, Rsqrt, Square, Reciprocal, Exp, Expm1, Log, Log1p, Log2, Log10, Sin, Cos, Tan, Tanh,
            Sigmoid, Erf, Floor, Ceil, Round, LogicalNot, IsNan, IsInf, IsFinite,
        ]
    };

    /// The op whose [`Self::name`] is `name` (for bindings that name ops by string).
    pub fn from_name(name: &str) -> Option<UnaryOp> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The op's user-facing name.
    pub fn name(self) -> &'static str {
        use UnaryOp::*;
        match self {
            Neg => "neg",
            Abs => "abs",
            Sign => "sign",
            Sqrt => "sqrt",
            Rsqrt => "rsqrt",
            Square => "square",
            Reciprocal => "reciprocal",
            Exp => "exp",
            Expm1 => "expm1",
            Log => "log",
            Log1p => "log1p",
            Log2 => "log2",
            Log10 => "log10",
            Sin => "sin",
            Cos => "cos",
            Tan => "tan",
            Tanh => "tanh",
            Sigmoid => "sigmoid",
            Erf => "erf",
            Floor => "floor",
            Ceil => "ceil",
            Round => "round",
            LogicalNot => "logical_not",
            IsNan => "isnan",
            IsInf => "isinf",
            IsFinite => "isfinite",
        }
    }

    /// True for ops defined only on floats (transcendentals, sqrt, reciprocal).
    pub fn float_only(self) -> bool {
        use UnaryOp::*;
        matches!(
            self,
            Sqrt | Rsqrt
                | Reciprocal
                | Exp
                | Expm1
                | Log
                | Log1p
                | Log2
                | Log10
                | Sin
                | Cos
                | Tan
                | Tanh
                | Sigmoid
                | Erf
        )
    }

    /// True for ops that evaluate a polynomial or a rational function per
    /// element (a dozen or more vector instructions): recomputing one costs
    /// more than reading its value back from cache.
    pub fn costly(self) -> bool {
        use UnaryOp::*;
        self.float_only() && !matches!(self, Sqrt | Rsqrt | Reciprocal)
    }

    /// Output dtype for an input dtype, or the reason it is not supported.
    pub fn out_dtype(self, x: DType) -> Result<DType> {
        use UnaryOp::*;
        match self {
            LogicalNot | IsNan | IsInf | IsFinite => Ok(DType::Bool),
            op if op.float_only() && !x.is_float() => Err(Error::DType {
                op: self.name(),
                dtype: x,
                msg: format!("{} needs a float array; convert first with .astype(DType::F32)", self.name()),
            }),
            Neg | Abs | Sign | Square | Floor | Ceil | Round if x == DType::Bool => Err(Error::DType {
                op: self.name(),
                dtype: x,
                msg: "not defined on bool arrays; use logical_not, or astype to a numeric dtype".into(),
            }),
            _ => Ok(x),
        }
    }
}

/// Elementwise operations of two operands (same dtype after promotion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// True division: integer operands give a float result.
    Div,
    /// Floor division (`//`): integer division rounding toward minus infinity.
    FloorDivide,
    /// Remainder with the sign of the divisor (Python's `%`).
    Remainder,
    Pow,
    /// NaN-propagating maximum.
    Maximum,
    /// NaN-propagating minimum.
    Minimum,
    Atan2,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    LogicalAnd,
    LogicalOr,
}

impl BinaryOp {
    /// Every binary op, in declaration order.
    pub const ALL: [BinaryOp; 18] = {
        use BinaryOp::*;
        [
            Add,
            Sub,
            Mul,
            Div,
            FloorDivide,
            Remainder,
            Pow,
            Maximum,
            Minimum,
            Atan2,
            Equal,
            NotEqual,
            Less,
            LessEqual,
            Greater,
            GreaterEqual,
            LogicalAnd,
            LogicalOr,
        ]
    };

    /// The op whose [`Self::name`] is `name` (for bindings that name ops by string).
    pub fn from_name(name: &str) -> Option<BinaryOp> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The op's user-facing name.
    pub fn name(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "add",
            Sub => "sub",
            Mul => "mul",
            Div => "div",
            FloorDivide => "floor_divide",
            Remainder => "remainder",
            Pow => "pow",
            Maximum => "maximum",
            Minimum => "minimum",
            Atan2 => "atan2",
            Equal => "equal",
            NotEqual => "not_equal",
            Less => "less",
            LessEqual => "less_equal",
            Greater => "greater",
            GreaterEqual => "greater_equal",
            LogicalAnd => "logical_and",
            LogicalOr => "logical_or",
        }
    }

    /// True for comparisons and logical ops (bool result).
    pub fn is_predicate(self) -> bool {
        use BinaryOp::*;
        matches!(self, Equal | NotEqual | Less | LessEqual | Greater | GreaterEqual | LogicalAnd | LogicalOr)
    }

    /// The dtype both operands are cast to before the op, given the
    /// promoted dtype of the operands.
    pub fn operand_dtype(self, promoted: DType) -> Result<DType> {
        use BinaryOp::*;
        match self {
            Div | Atan2 => {
                if self == Atan2 && !promoted.is_float() {
                    return Err(Error::DType {
                        op: self.name(),
                        dtype: promoted,
                        msg: "atan2 needs float operands; convert first with .astype(DType::F32)".into(),
                    });
                }
                Ok(promoted.to_float())
            }
            Sub | FloorDivide | Remainder | Pow if promoted == DType::Bool => Err(Error::DType {
                op: self.name(),
                dtype: promoted,
                msg: "not defined on bool operands; use logical ops, or astype to a numeric dtype".into(),
            }),
            _ => Ok(promoted),
        }
    }

    /// Output dtype given the (already cast) operand dtype.
    pub fn out_dtype(self, operand: DType) -> DType {
        if self.is_predicate() {
            DType::Bool
        } else {
            operand
        }
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the number of reduced elements (runtime count).
    Mean,
    Prod,
    Max,
    Min,
    All,
    Any,
    /// `log(sum(exp(x)))`, computed in one pass with a running maximum.
    LogSumExp,
    /// `sum(exp(x - max(x)))` in one pass (the softmax denominator); a
    /// non-finite maximum gives NaN, as the two-pass form does.
    SumExp,
    /// Variance `sum((x - mean(x))^2) / max(n - ddof, 0)` in one pass
    /// (blockwise moments merged with Chan's formula).
    Var {
        /// Delta degrees of freedom.
        ddof: usize,
    },
}

impl ReduceOp {
    /// The op's user-facing name.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::All => "all",
            ReduceOp::Any => "any",
            ReduceOp::LogSumExp => "logsumexp",
            ReduceOp::SumExp => "sumexp",
            ReduceOp::Var { .. } => "var",
        }
    }

    /// Output dtype: bool sums to i32, mean is float, all/any are bool.
    pub fn out_dtype(self, x: DType) -> DType {
        match self {
            ReduceOp::Sum | ReduceOp::Prod if x == DType::Bool => DType::I32,
            ReduceOp::Mean | ReduceOp::LogSumExp | ReduceOp::SumExp | ReduceOp::Var { .. } => x.to_float(),
            ReduceOp::All | ReduceOp::Any => DType::Bool,
            _ => x,
        }
    }
}

/// Index-of-extremum reductions along one axis (result dtype `u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ArgReduceOp {
    ArgMax,
    ArgMin,
}

/// One axis of a slice, in Python's `start:stop:step` form; `None` means the
/// default end for the step's direction. Normalized against the input's
/// shape each time the shape is inferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SliceAxis {
    /// First index (negative counts from the end).
    pub start: Option<isize>,
    /// One past the last index (negative counts from the end).
    pub stop: Option<isize>,
    /// Step, never 0.
    pub step: isize,
}

impl SliceAxis {
    /// Python's slice normalization: the first index and the length (at
    /// most `dim`). Exact for any bounds and step: computed in `i128`, so
    /// no bound, step or dimension can overflow it.
    pub fn resolve(&self, dim: usize) -> (usize, usize) {
        let n = dim as i128;
        let step = self.step as i128;
        let norm = |v: isize| if v < 0 { v as i128 + n } else { v as i128 };
        let (start, len) = if step > 0 {
            let start = self.start.map_or(0, |s| norm(s).clamp(0, n));
            let stop = self.stop.map_or(n, |s| norm(s).clamp(0, n));
            (start, if stop > start { (stop - start - 1) / step + 1 } else { 0 })
        } else {
            let start = self.start.map_or(n - 1, |s| norm(s).clamp(-1, n - 1));
            let stop = self.stop.map_or(-1, |s| norm(s).clamp(-1, n - 1));
            (start, if start > stop { (start - stop - 1) / -step + 1 } else { 0 })
        };
        // 0 <= len <= dim and, when len > 0, 0 <= start < dim: both fit usize.
        (start.max(0) as usize, len as usize)
    }
}

/// Fusion class of a primitive, used by the fuser (see `passes/fuse.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionClass {
    /// A leaf: a constant or a placeholder.
    Leaf,
    /// Elementwise: output element i depends on input element i (after broadcasting).
    Elementwise,
    /// A view: a stride change of one input (transpose, slice, broadcast, reshape).
    View,
    /// A reduction: may absorb elementwise producers.
    Reduce,
    /// Matrix product: may absorb elementwise consumers as an epilogue.
    Matmul,
    /// Everything else (gather, concatenate, random bits, ...): its own kernel.
    Opaque,
}

/// An operation: what a graph node computes from its inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Primitive {
    /// Data that already exists (the node's buffer is set at creation).
    Constant,
    /// An input of a function being traced by `compile`: shape and dtype, no data.
    Placeholder {
        /// Position of the argument.
        index: usize,
    },
    /// Elementwise op of one input.
    Unary(UnaryOp),
    /// Elementwise op of two inputs of the same dtype, with broadcasting.
    Binary(BinaryOp),
    /// `where(cond, a, b)`: inputs cond (bool), a and b of one dtype, broadcast.
    Where,
    /// Conversion to another dtype.
    AsType(DType),
    /// Reduction over sorted, distinct axes.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Axes to reduce (sorted, normalized).
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// Index of the max/min along one axis.
    ArgReduce {
        /// Which extremum.
        op: ArgReduceOp,
        /// The axis (normalized).
        axis: usize,
        /// Keep the axis as size 1.
        keepdims: bool,
    },
    /// Matrix product of two arrays of at least 2 dims with broadcast batch dims
    /// (1-D operands are reshaped by `ops::matmul`).
    Matmul,
    /// Reshape; the spec may hold one -1. A view when strides allow, else a copy.
    Reshape {
        /// Target dims as given (-1 is inferred).
        shape: Vec<isize>,
    },
    /// Removal of size-1 axes (a view). Stores the axes, not the resulting
    /// shape, so a shapeless compiled function follows new sizes of the
    /// other axes.
    Squeeze {
        /// The axes removed (sorted, normalized).
        axes: Vec<usize>,
        /// The axes were not named: they were all the size-1 axes at the
        /// traced shapes. At new shapes the set of size-1 axes must then be
        /// the same (the output's rank depends on it), or inference fails.
        all: bool,
    },
    /// Insertion of size-1 axes (a view).
    ExpandDims {
        /// Positions of the new axes in the output (sorted, normalized).
        axes: Vec<usize>,
    },
    /// Permutation of the axes (a view).
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Broadcast to a fixed shape (a view).
    BroadcastTo {
        /// Target shape.
        shape: Vec<usize>,
    },
    /// Broadcast input 0 to the common broadcast shape of all inputs (a
    /// view); the other inputs lend only their shapes, so a shapeless
    /// compiled function follows them (`zeros_like`, `broadcast_arrays`).
    BroadcastLike,
    /// Section `index` of `sections` equal parts along `axis` (a view; used
    /// by `split`). Stores the count, not the bounds, so it follows new sizes.
    SplitSection {
        /// The axis (normalized).
        axis: usize,
        /// Number of equal parts; the axis size must divide evenly.
        sections: usize,
        /// Which part.
        index: usize,
    },
    /// Strided slice of the leading axes (a view).
    Slice {
        /// One entry per sliced axis; later axes are kept whole.
        axes: Vec<SliceAxis>,
    },
    /// Concatenation of inputs of one dtype along an axis.
    Concatenate {
        /// The axis (normalized).
        axis: usize,
    },
    /// Gather: input 0 indexed along `axis` by input 1 (integer indices;
    /// negative ones count from the end). Output shape is
    /// `x.shape[..axis] + idx.shape + x.shape[axis+1..]`.
    Take {
        /// The axis (normalized).
        axis: usize,
    },
    /// A materialized contiguous copy of the input.
    Copy,
    /// `start + i * step` for `i` in `0..len`, in the given dtype.
    Arange {
        /// First value.
        start: f64,
        /// Step.
        step: f64,
        /// Number of elements.
        len: usize,
        /// Output dtype.
        dtype: DType,
    },
    /// Counter-based random bits (`u32`) from a key (input 0, `u32[2]`).
    /// With a second input, the output shape is `shape` followed by that
    /// input's shape (which is all it reads: the `*_like` draws), and a
    /// shapeless compiled function follows it; otherwise it is `shape`.
    RandomBits {
        /// Output shape, or its leading dims when there is a second input.
        shape: Vec<usize>,
    },
}

impl Primitive {
    /// For a view, the output's layout over its input's storage (`input` is
    /// the input's layout, `shape` the output's): every backend evaluates
    /// views this way, without touching data. `None` for ops that compute,
    /// and for a reshape (or squeeze, expand) that the input's strides
    /// cannot express, which copies.
    pub fn view_layout(&self, input: &Layout, shape: &[usize]) -> Option<Layout> {
        match self {
            Primitive::Reshape { .. } | Primitive::Squeeze { .. } | Primitive::ExpandDims { .. } => {
                input.reshape(shape)
            }
            Primitive::Transpose { perm } => Some(input.permute(perm)),
            Primitive::BroadcastTo { .. } | Primitive::BroadcastLike => Some(input.broadcast_to(shape)),
            Primitive::Slice { axes } => {
                let (mut starts, mut lens, mut steps) =
                    (vec![0; input.ndim()], input.shape.to_vec(), vec![1; input.ndim()]);
                for (i, a) in axes.iter().enumerate() {
                    (starts[i], lens[i]) = a.resolve(input.shape[i]);
                    steps[i] = a.step;
                }
                Some(input.slice(&starts, &lens, &steps))
            }
            Primitive::SplitSection { axis, index, .. } => {
                let mut starts = vec![0; input.ndim()];
                starts[*axis] = index * shape[*axis];
                Some(input.slice(&starts, shape, &vec![1; input.ndim()]))
            }
            _ => None,
        }
    }
}

/// Shape and dtype of an input, as seen by shape inference.
pub type Sig<'a> = (&'a [usize], DType);

fn need_inputs(op: &'static str, inputs: &[Sig], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(Error::Invalid { op, msg: format!("expects {n} input(s), got {}", inputs.len()) });
    }
    Ok(())
}

fn same_dtype(op: &'static str, inputs: &[Sig]) -> Result<DType> {
    let d = inputs[0].1;
    for (_, di) in inputs {
        if *di != d {
            return Err(Error::Invalid { op, msg: format!("inputs have different dtypes {d} and {di}") });
        }
    }
    Ok(d)
}

/// Resolves a reshape spec (one -1 allowed) against an element count.
pub fn resolve_reshape(from: &[usize], spec: &[isize]) -> Result<Vec<usize>> {
    let total = numel_checked("reshape", from)?;
    let mut infer = None;
    let mut known = 1usize;
    for (i, &d) in spec.iter().enumerate() {
        if d == -1 {
            if infer.is_some() {
                return Err(Error::Shape { op: "reshape", msg: format!("only one dimension can be -1, got {spec:?}") });
            }
            infer = Some(i);
        } else if d < 0 {
            return Err(Error::Shape { op: "reshape", msg: format!("negative dimension {d} in {spec:?}") });
        } else {
            known = known.checked_mul(d as usize).ok_or_else(|| Error::Overflow {
                op: "reshape",
                shape: spec.iter().map(|&x| x.max(0) as usize).collect(),
            })?;
        }
    }
    let mut out: Vec<usize> = spec.iter().map(|&d| d.max(0) as usize).collect();
    match infer {
        Some(i) => {
            if known == 0 || total % known != 0 {
                return Err(Error::Shape {
                    op: "reshape",
                    msg: format!("cannot reshape array of shape {} (size {total}) into {spec:?}", shape_str(from)),
                });
            }
            out[i] = total / known;
        }
        None => {
            if known != total {
                return Err(Error::Shape {
                    op: "reshape",
                    msg: format!(
                        "cannot reshape array of shape {} (size {total}) into shape {} (size {known})",
                        shape_str(from),
                        shape_str(&out)
                    ),
                });
            }
        }
    }
    Ok(out)
}

impl Primitive {
    /// A short name for messages, `explain` and DOT output.
    pub fn name(&self) -> &'static str {
        match self {
            Primitive::Constant => "constant",
            Primitive::Placeholder { .. } => "placeholder",
            Primitive::Unary(op) => op.name(),
            Primitive::Binary(op) => op.name(),
            Primitive::Where => "where",
            Primitive::AsType(_) => "astype",
            Primitive::Reduce { op, .. } => op.name(),
            Primitive::ArgReduce { op: ArgReduceOp::ArgMax, .. } => "argmax",
            Primitive::ArgReduce { op: ArgReduceOp::ArgMin, .. } => "argmin",
            Primitive::Matmul => "matmul",
            Primitive::Reshape { .. } => "reshape",
            Primitive::Squeeze { .. } => "squeeze",
            Primitive::ExpandDims { .. } => "expand_dims",
            Primitive::Transpose { .. } => "transpose",
            Primitive::BroadcastTo { .. } => "broadcast_to",
            Primitive::BroadcastLike => "broadcast_arrays",
            Primitive::SplitSection { .. } => "split",
            Primitive::Slice { .. } => "slice",
            Primitive::Concatenate { .. } => "concatenate",
            Primitive::Take { .. } => "take",
            Primitive::Copy => "copy",
            Primitive::Arange { .. } => "arange",
            Primitive::RandomBits { .. } => "random_bits",
        }
    }

    /// True for elementwise ops whose per-element work is much more than a
    /// load and a store ([`UnaryOp::costly`], `pow`, `atan2`).
    pub fn costly(&self) -> bool {
        match self {
            Primitive::Unary(op) => op.costly(),
            Primitive::Binary(op) => matches!(op, BinaryOp::Pow | BinaryOp::Atan2),
            _ => false,
        }
    }

    /// The fusion class.
    pub fn class(&self) -> FusionClass {
        match self {
            Primitive::Constant | Primitive::Placeholder { .. } => FusionClass::Leaf,
            Primitive::Unary(_) | Primitive::Binary(_) | Primitive::Where | Primitive::AsType(_) => {
                FusionClass::Elementwise
            }
            Primitive::Reshape { .. }
            | Primitive::Squeeze { .. }
            | Primitive::ExpandDims { .. }
            | Primitive::Transpose { .. }
            | Primitive::BroadcastTo { .. }
            | Primitive::BroadcastLike
            | Primitive::SplitSection { .. }
            | Primitive::Slice { .. } => FusionClass::View,
            Primitive::Reduce { .. } | Primitive::ArgReduce { .. } => FusionClass::Reduce,
            Primitive::Matmul => FusionClass::Matmul,
            Primitive::Concatenate { .. }
            | Primitive::Take { .. }
            | Primitive::Copy
            | Primitive::Arange { .. }
            | Primitive::RandomBits { .. } => FusionClass::Opaque,
        }
    }

    /// Infers the output shape and dtype from the inputs' shapes and dtypes,
    /// validating them. Called when an op is built and again when a shapeless
    /// compiled function runs on new shapes.
    /// Every output is checked with [`check_size`]: an op whose output
    /// would not fit in memory's address space fails here.
    pub fn infer(&self, inputs: &[Sig]) -> Result<(Vec<usize>, DType)> {
        let (shape, dtype) = self.infer_rule(inputs)?;
        check_size(self.name(), &shape, dtype)?;
        Ok((shape, dtype))
    }

    /// The shape rule of each primitive (see [`Self::infer`]).
    fn infer_rule(&self, inputs: &[Sig]) -> Result<(Vec<usize>, DType)> {
        let name = self.name();
        match self {
            Primitive::Constant | Primitive::Placeholder { .. } => {
                Err(Error::Invalid { op: name, msg: "leaves have no inputs to infer from".into() })
            }
            Primitive::Unary(op) => {
                need_inputs(name, inputs, 1)?;
                Ok((inputs[0].0.to_vec(), op.out_dtype(inputs[0].1)?))
            }
            Primitive::Binary(op) => {
                need_inputs(name, inputs, 2)?;
                let d = same_dtype(name, inputs)?;
                let shape = broadcast_shapes(name, inputs[0].0, inputs[1].0)?;
                Ok((shape, op.out_dtype(d)))
            }
            Primitive::Where => {
                need_inputs(name, inputs, 3)?;
                if inputs[0].1 != DType::Bool {
                    return Err(Error::DType { op: name, dtype: inputs[0].1, msg: "condition must be bool".into() });
                }
                let d = same_dtype(name, &inputs[1..])?;
                let s = broadcast_shapes(name, inputs[0].0, inputs[1].0)?;
                let s = broadcast_shapes(name, &s, inputs[2].0)?;
                Ok((s, d))
            }
            Primitive::AsType(d) => {
                need_inputs(name, inputs, 1)?;
                Ok((inputs[0].0.to_vec(), *d))
            }
            Primitive::Reduce { op, axes, keepdims } => {
                need_inputs(name, inputs, 1)?;
                let (shape, dt) = inputs[0];
                if let Some(&a) = axes.iter().find(|&&a| a >= shape.len()) {
                    return Err(Error::Axis { op: name, axis: a as isize, ndim: shape.len() });
                }
                // `sumexp` is `sum(exp(x - max(x)))` rewritten: its max fails too.
                if matches!(op, ReduceOp::Max | ReduceOp::Min | ReduceOp::SumExp) && axes.iter().any(|&a| shape[a] == 0)
                {
                    let name = if *op == ReduceOp::SumExp { "max" } else { name };
                    return Err(Error::Shape {
                        op: name,
                        msg: format!(
                            "cannot reduce an empty axis of shape {}: {name} has no identity",
                            shape_str(shape)
                        ),
                    });
                }
                Ok((reduced_shape(shape, axes, *keepdims), op.out_dtype(dt)))
            }
            Primitive::ArgReduce { axis, keepdims, .. } => {
                need_inputs(name, inputs, 1)?;
                let shape = inputs[0].0;
                if *axis >= shape.len() {
                    return Err(Error::Axis { op: name, axis: *axis as isize, ndim: shape.len() });
                }
                if shape[*axis] == 0 {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("cannot take {name} of an empty axis of shape {}", shape_str(shape)),
                    });
                }
                Ok((reduced_shape(shape, &[*axis], *keepdims), DType::U32))
            }
            Primitive::Matmul => {
                need_inputs(name, inputs, 2)?;
                let d = same_dtype(name, inputs)?;
                if d == DType::Bool {
                    return Err(Error::DType {
                        op: name,
                        dtype: d,
                        msg: "convert bool operands to a numeric dtype".into(),
                    });
                }
                let (a, b) = (inputs[0].0, inputs[1].0);
                if a.len() < 2 || b.len() < 2 {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("operands need at least 2 dims, got {} and {}", shape_str(a), shape_str(b)),
                    });
                }
                let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
                let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
                if k != k2 {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!(
                            "inner dimensions do not match: {} @ {} (last dim of the left, {k}, must equal \
                             the second-to-last dim of the right, {k2})",
                            shape_str(a),
                            shape_str(b)
                        ),
                    });
                }
                let mut s = broadcast_shapes(name, &a[..a.len() - 2], &b[..b.len() - 2])?;
                s.push(m);
                s.push(n);
                numel_checked(name, &s)?;
                Ok((s, d))
            }
            Primitive::Reshape { shape } => {
                need_inputs(name, inputs, 1)?;
                Ok((resolve_reshape(inputs[0].0, shape)?, inputs[0].1))
            }
            Primitive::Squeeze { axes, all } => {
                need_inputs(name, inputs, 1)?;
                let s = inputs[0].0;
                if let Some(&a) = axes.iter().find(|&&a| a >= s.len()) {
                    return Err(Error::Axis { op: name, axis: a as isize, ndim: s.len() });
                }
                if let Some(&bad) = axes.iter().find(|&&a| s[a] != 1) {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("cannot squeeze axis {bad} of shape {}: its size is not 1", shape_str(s)),
                    });
                }
                if *all && s.iter().enumerate().any(|(i, &d)| d == 1 && !axes.contains(&i)) {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!(
                            "squeezing every size-1 axis of shape {} would remove axes {:?}, not the traced {:?}; \
                             name the axes to squeeze",
                            shape_str(s),
                            (0..s.len()).filter(|&i| s[i] == 1).collect::<Vec<_>>(),
                            axes
                        ),
                    });
                }
                Ok(((0..s.len()).filter(|i| !axes.contains(i)).map(|i| s[i]).collect(), inputs[0].1))
            }
            Primitive::ExpandDims { axes } => {
                need_inputs(name, inputs, 1)?;
                let out_nd = inputs[0].0.len() + axes.len();
                if let Some(&a) = axes.iter().find(|&&a| a >= out_nd) {
                    return Err(Error::Axis { op: name, axis: a as isize, ndim: out_nd });
                }
                let mut src = inputs[0].0.iter();
                let out = (0..out_nd).map(|i| if axes.contains(&i) { 1 } else { *src.next().unwrap_or(&1) }).collect();
                Ok((out, inputs[0].1))
            }
            Primitive::Transpose { perm } => {
                need_inputs(name, inputs, 1)?;
                let s = inputs[0].0;
                let mut seen = vec![false; s.len()];
                if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("{perm:?} is not a permutation of the axes of shape {}", shape_str(s)),
                    });
                }
                Ok((perm.iter().map(|&p| s[p]).collect(), inputs[0].1))
            }
            Primitive::BroadcastTo { shape } => {
                need_inputs(name, inputs, 1)?;
                check_broadcast_to(name, inputs[0].0, shape)?;
                numel_checked(name, shape)?;
                Ok((shape.clone(), inputs[0].1))
            }
            Primitive::BroadcastLike => {
                if inputs.is_empty() {
                    return Err(Error::Invalid { op: name, msg: "needs at least one array".into() });
                }
                let mut shape = inputs[0].0.to_vec();
                for (s, _) in &inputs[1..] {
                    shape = broadcast_shapes(name, &shape, s)?;
                }
                numel_checked(name, &shape)?;
                Ok((shape, inputs[0].1))
            }
            Primitive::SplitSection { axis, sections, index } => {
                need_inputs(name, inputs, 1)?;
                let s = inputs[0].0;
                if *axis >= s.len() {
                    return Err(Error::Axis { op: name, axis: *axis as isize, ndim: s.len() });
                }
                if *sections == 0 || *index >= *sections || !s[*axis].is_multiple_of(*sections) {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!(
                            "axis {axis} of shape {} does not split into {sections} equal sections",
                            shape_str(s)
                        ),
                    });
                }
                let mut out = s.to_vec();
                out[*axis] /= sections;
                Ok((out, inputs[0].1))
            }
            Primitive::Slice { axes } => {
                need_inputs(name, inputs, 1)?;
                let s = inputs[0].0;
                if axes.len() > s.len() {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("{} axes given for an array of shape {}", axes.len(), shape_str(s)),
                    });
                }
                if axes.iter().any(|a| a.step == 0) {
                    return Err(Error::Invalid { op: name, msg: "slice step cannot be 0".into() });
                }
                let mut out = s.to_vec();
                for (i, a) in axes.iter().enumerate() {
                    out[i] = a.resolve(s[i]).1;
                }
                Ok((out, inputs[0].1))
            }
            Primitive::Concatenate { axis } => {
                if inputs.is_empty() {
                    return Err(Error::Invalid { op: name, msg: "needs at least one array".into() });
                }
                let d = same_dtype(name, inputs)?;
                let first = inputs[0].0;
                if *axis >= first.len() {
                    return Err(Error::Axis { op: name, axis: *axis as isize, ndim: first.len() });
                }
                let mut out = first.to_vec();
                out[*axis] = 0;
                for (s, _) in inputs {
                    let same_rank = s.len() == first.len();
                    if !same_rank || (0..first.len()).any(|i| i != *axis && s[i] != first[i]) {
                        return Err(Error::Shape {
                            op: name,
                            msg: format!(
                                "all arrays must have the same shape except along axis {axis}: got {} and {}",
                                shape_str(first),
                                shape_str(s)
                            ),
                        });
                    }
                    out[*axis] = out[*axis].checked_add(s[*axis]).ok_or_else(|| Error::Overflow {
                        op: name,
                        shape: inputs.iter().map(|(s, _)| s[*axis]).collect(),
                    })?;
                }
                Ok((out, d))
            }
            Primitive::Take { axis } => {
                need_inputs(name, inputs, 2)?;
                let (x, dt) = inputs[0];
                let (idx, it) = inputs[1];
                if !it.is_int() {
                    return Err(Error::DType { op: name, dtype: it, msg: "indices must be an integer array".into() });
                }
                if *axis >= x.len() {
                    return Err(Error::Axis { op: name, axis: *axis as isize, ndim: x.len() });
                }
                if x[*axis] == 0 && idx.iter().product::<usize>() > 0 {
                    return Err(Error::Shape {
                        op: name,
                        msg: format!("cannot take from an empty axis {axis} of shape {}", shape_str(x)),
                    });
                }
                let mut out = x[..*axis].to_vec();
                out.extend_from_slice(idx);
                out.extend_from_slice(&x[axis + 1..]);
                numel_checked(name, &out)?;
                Ok((out, dt))
            }
            Primitive::Copy => {
                need_inputs(name, inputs, 1)?;
                Ok((inputs[0].0.to_vec(), inputs[0].1))
            }
            Primitive::Arange { len, dtype, .. } => {
                need_inputs(name, inputs, 0)?;
                Ok((vec![*len], *dtype))
            }
            Primitive::RandomBits { shape } => {
                if inputs.is_empty() || inputs.len() > 2 {
                    need_inputs(name, inputs, 1)?;
                }
                if inputs[0].0 != [2] || inputs[0].1 != DType::U32 {
                    return Err(Error::Invalid {
                        op: name,
                        msg: format!(
                            "a key is a u32 array of shape (2), got {}{}",
                            inputs[0].1,
                            shape_str(inputs[0].0)
                        ),
                    });
                }
                let mut out = shape.clone();
                if let Some((like, _)) = inputs.get(1) {
                    out.extend_from_slice(like);
                }
                numel_checked(name, &out)?;
                Ok((out, DType::U32))
            }
        }
    }
}

/// The shape after reducing `axes` (sorted) of `shape`.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(1);
            }
        } else {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_resolution_matches_python() {
        let s = |start, stop, step| SliceAxis { start, stop, step };
        assert_eq!(s(None, None, 1).resolve(5), (0, 5));
        assert_eq!(s(None, None, -1).resolve(5), (4, 5));
        assert_eq!(s(Some(1), Some(4), 2).resolve(5), (1, 2));
        assert_eq!(s(Some(-1), None, -2).resolve(5), (4, 3));
        assert_eq!(s(Some(10), None, 1).resolve(5).1, 0);
        assert_eq!(s(None, None, -1).resolve(0).1, 0);
        assert_eq!(s(Some(3), Some(1), -1).resolve(5), (3, 2));
        // Extreme steps and bounds neither overflow nor over-count.
        assert_eq!(s(None, None, isize::MAX - 1).resolve(3), (0, 1));
        assert_eq!(s(None, None, isize::MIN).resolve(3), (2, 1));
        assert_eq!(s(None, None, isize::MAX).resolve(usize::MAX), (0, 3));
        assert_eq!(s(Some(isize::MAX), Some(isize::MIN), -1).resolve(4), (3, 4));
    }

    #[test]
    fn matmul_shape_error_names_both_shapes() {
        let e = Primitive::Matmul.infer(&[(&[32, 128], DType::F32), (&[256, 128], DType::F32)]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("matmul") && m.contains("(32, 128)") && m.contains("(256, 128)"), "{m}");
    }

    #[test]
    fn reshape_inference() {
        assert_eq!(resolve_reshape(&[2, 6], &[3, -1]).unwrap(), vec![3, 4]);
        assert!(resolve_reshape(&[2, 6], &[5, -1]).is_err());
        assert!(resolve_reshape(&[2, 6], &[-1, -1]).is_err());
        assert_eq!(resolve_reshape(&[0, 6], &[0, 3]).unwrap(), vec![0, 3]);
    }
}
