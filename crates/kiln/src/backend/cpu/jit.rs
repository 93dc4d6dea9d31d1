//! The kernel compiler: turns a fused group of `f32` (or `f64`)
//! elementwise ops into one machine-code loop that keeps every
//! intermediate value in a vector register.
//!
//! The tile interpreter ([`fused`](crate::backend::cpu::fused)) runs each op
//! as its own pass over a tile, so every op stores its result and the next
//! one loads it again: about two cycles per vector and op, which makes long
//! chains (gelu, the layernorm epilogue) compute-bound. A compiled kernel
//! loads each input once per vector, computes the whole group in registers
//! and stores only the outputs.
//!
//! Compilation has two steps:
//!
//! 1. **Lowering** ([`lower`]) records the group as a [`Prog`]: a list of
//!    vector operations in SSA form. Transcendental functions are recorded
//!    by running the very code of [`simd_math`] on a tracing vector type
//!    ([`Traced`]), so compiled and interpreted kernels compute the same
//!    operations and agree to the last bit.
//! 2. **Code generation** allocates registers and emits the loop, once per
//!    pattern of broadcast inputs (a broadcast input is loaded once, before
//!    the loop, and everything computed from broadcast inputs alone is
//!    hoisted there too). There are two generators, and the level that
//!    [`simd_math`] detects picks one, once per process:
//!    [`jit_x86`](crate::backend::cpu::jit_x86) for AVX-512 (16 lanes, 32
//!    vector registers, mask registers for the tail and for comparisons) and
//!    [`jit_avx2`](crate::backend::cpu::jit_avx2) for AVX2 + FMA (8 lanes,
//!    16 vector registers, so values are spilled to the stack when a chain
//!    needs more; comparisons make lane masks in vector registers; a masked
//!    move handles the tail). They share the calling convention and the
//!    loop schedule ([`jit_code`](crate::backend::cpu::jit_code)).
//!
//! The two levels of `simd_math` differ in a few operations: AVX-512
//! refines a 14-bit reciprocal estimate once and scales by `2^n` in one
//! instruction (`vscalefps`); AVX2 refines a 12-bit estimate twice and
//! scales by multiplications by powers of two made of shifted bits
//! (`simd_math::scale_split`). A program is therefore recorded for the
//! level it is generated for ([`lower_at`]): its nodes are exactly the
//! operations that level's interpreter runs, and each generator emits only
//! the nodes of its level (the other's make it decline).
//!
//! A group is compiled, however few its ops (a single op too: its
//! generated loop beats the interpreter's tiles in and out of cache; eager
//! ops keep their groups, so each is compiled once per process), when it
//! has at most
//! [`MAX_INPUTS`] inputs (any number of outputs), every value is `f32`,
//! `bool`, `i32`, `u8` or a 16-bit float, or every value is `f64` or `bool` (a
//! `bool` input or output is one byte per position), each op has a
//! lowering (arithmetic, `abs`, `neg`, `sign`, `square`, `sqrt`, `rsqrt`,
//! rounding, `maximum`/`minimum`, `floor_divide`, `remainder`, `pow`,
//! `atan2`, `exp`, `expm1`, `log`, `log1p`, `log2`,
//! `log10`, `tanh`, `sigmoid`, `erf`, `sin`, `cos`, `tan`; comparisons of
//! `f32`, `logical_and`/`or`/`not`, ops of two `bool`s (as mask
//! operations: `+` and `maximum` are `or`, `*` and `minimum` are `and`,
//! false orders before true),
//! `isnan`/`isinf`/`isfinite`, `where`, `astype` between `f32`, `bool`
//! and the 16-bit floats), and the CPU has AVX-512 or AVX2 and FMA. A `bool` value is a
//! lane mask (a mask register on AVX-512, a vector of all-ones or zero
//! lanes on AVX2): `where(x > 0, x, 0.01 * x)` is one loop, as
//! `maximum(x, 0.01 * x)` is; a `bool` input's bytes are widened and
//! tested (nonzero is true), and a `bool` output's mask stored as bytes 0
//! or 1, so a mask argument (`where(mask, x, -inf)`) or a comparison
//! returned (`x > 0`) stays in the kernel too. A `float16` or `bfloat16`
//! value is an `f32` lane too: the interpreter computes each op of these
//! types in `f32` and rounds its result to the type, and so does the
//! generated code ([`Un::Narrow`] after every op that can leave the type's
//! values: not after moves, sign changes or rounding to integers); inputs
//! are widened as they are loaded (`vcvtph2ps` (F16C on AVX2), or a shift for
//! `bfloat16`) and outputs narrowed, exactly, as they are stored, so a
//! half-precision chain moves half the bytes of an `f32` one and runs in
//! one loop instead of a tile pass per op. An `i32` value is a 32-bit
//! lane beside the `f32` ones, with wrapping `+`, `-`, `*`, `abs`, `neg`,
//! `sign`, `maximum`/`minimum`, signed comparisons, `where`, casts from
//! and to `f32`, `bool` and the 16-bit floats (float to int truncates and
//! saturates, NaN to 0, as `as` does; to `bfloat16` through an `f32`
//! rounded to odd, so the value is rounded once, as the interpreter
//! rounds it: `int_to_float_odd` holds the proof), and `floor_divide`,
//! `remainder` and `pow`: division in `f32`, exact for dividends below
//! 2^24 in magnitude, and square-and-multiply for exponents from 0 to 31,
//! with a [`Node::Fix`] call to the scalar code for a vector with any
//! other lane (`int_divmod` and `int_pow` hold the proofs). A `u8` value
//! is a 32-bit integer lane holding 0 to 255, its bytes widened as they
//! are loaded and narrowed as they are stored (as a `bool`'s are): the
//! `i32` operations on it, then its low byte where the result can leave
//! the range (wrapping `+`, `-`, `*`, `neg`, `pow`), and casts to and from
//! every 32-bit lane type (from a float: clamped to 0..255, then
//! truncated, NaN to 0, as `as` converts; from `i32`: the low byte). An `f64` group
//! is a program of `f64` lanes ([`Elem::F64`]: 8 a vector, 4 on AVX2, the
//! same nodes emitted as the `pd` forms of the instructions, constants as
//! `f64` bits) with arithmetic, `sqrt`, rounding, `maximum`/`minimum`,
//! comparisons, selections, the logical ops and the `exp`, `expm1`, `log`,
//! `log1p`, `log2`, `log10`, `sin`, `cos`, `tan`, `tanh`, `sigmoid` and
//! `erf` of [`math_f64`](crate::backend::cpu::math_f64), recorded from the
//! code the interpreter runs (the trigonometric lanes it leaves to the C
//! library call out, [`Fix::Library`]), its `atan2` and `pow`, and
//! `floor_divide` and `remainder` (below). Sine, cosine and tangent run their vector reduction by
//! `π/2`, which holds for `|x| <=` [`TRIG_LIMIT`](simd_math::TRIG_LIMIT);
//! a vector with a lane beyond it (or an infinity) calls
//! [`fix_big_lanes`](simd_math::fix_big_lanes) from the loop
//! ([`Node::Fix`]: the vector registers in use (AVX2: all) and the mask
//! registers saved around the call, which almost never runs), so the
//! kernel computes what the interpreter computes at any argument. `floor_divide` and
//! `remainder` compute Python's `divmod` in vector code where `fmod` is
//! exact by FMA (finite operands, `|a / b| < 2^22`, or `2^51` in `f64`)
//! and call the scalar code for a vector with any other lane
//! ([`Fix::Remainder`]). Anything else runs on
//! the interpreter, which remains the reference. Setting the
//! environment variable `KILN_JIT=0` turns compilation off (to compare, or
//! to debug a suspected code generation problem); `KILN_JIT_DUMP=dir`
//! writes each generated kernel's machine code to `dir`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::cpu::math::IntMath;
use crate::backend::cpu::math_f64::{Trig, Vf64};
use crate::backend::cpu::simd_math::{self, Func, Level, Table, Vf32};
use crate::backend::cpu::CpuGroup;
use crate::dtype::DType;
use crate::passes::fuse::{FusedGroup, FusedOp};
use crate::primitive::{BinaryOp, Primitive, UnaryOp};

/// A value of a [`Prog`]: the index of the node that computes it.
pub type Val = u32;

/// Two-operand vector operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `a < b ? a : b` (the second operand when either is NaN, as `vminps`).
    Min,
    /// `a > b ? a : b` (the second operand when either is NaN, as `vmaxps`).
    Max,
    /// Bitwise and.
    And,
    /// Bitwise xor.
    Xor,
    /// Bitwise or.
    Or,
    /// Integer add of the bit patterns (wrapping, as are the next four:
    /// `i32` arithmetic, 32-bit lanes only).
    IAdd,
    /// Integer subtraction.
    ISub,
    /// Integer multiplication (the low 32 bits).
    IMul,
    /// Signed integer minimum.
    IMin,
    /// Signed integer maximum.
    IMax,
    /// `a * 2^floor(b)`, rounded once (`vscalefps`; AVX-512 only).
    Scalef,
}

/// One-operand vector operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Un {
    /// Square root.
    Sqrt,
    /// Reciprocal estimate with relative error below 2^-14 (`vrcp14ps`;
    /// AVX-512 only).
    Rcp14,
    /// Reciprocal estimate with relative error below 1.5 * 2^-12 (`vrcpps`;
    /// AVX2; its bits differ between CPU makers, and so the interpreter's
    /// on the same CPU is what the generated code matches).
    Rcp12,
    /// Round to nearest, ties to even.
    Round,
    /// Round down.
    Floor,
    /// Round up.
    Ceil,
    /// `(bits as i32 >> 23) as f32`.
    Sra23,
    /// `2^n` for integer-valued `n` in `[-126, 127]`.
    Pow2i,
    /// The lane's bits shifted left by this many places (`f64` programs:
    /// 64-bit lanes).
    Shl(u8),
    /// The lane's bits, a signed integer, shifted right by this many
    /// places (`f64` programs: 64-bit lanes).
    Sra(u8),
    /// Integer absolute value (`i32::MIN` stays itself, as `wrapping_abs`).
    IAbs,
    /// An `i32` lane to the nearest `f32` (ties to even).
    IntToFloat,
    /// An `f32` lane truncated toward zero to an `i32`; `i32::MIN` when the
    /// result is out of range or NaN (the lowering fixes those lanes).
    FloatToIntTrunc,
    /// Rounded to the nearest value of a 16-bit float type (ties to even;
    /// overflow to infinity; a NaN quieted), as
    /// [`half_conv`](crate::backend::cpu::half_conv) rounds, kept as an
    /// `f32` (AVX-512 only).
    Narrow(Half),
    /// Entry `b & 7` of the table, `b` the lane's bits (`vpermps`).
    Lookup(Table),
}

/// A 16-bit float type: the storage of a `float16` or `bfloat16` input or
/// output, and the precision an op of that dtype rounds its `f32` result to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Half {
    /// IEEE binary16 (`float16`).
    F16,
    /// bfloat16: the top half of an `f32`.
    Bf16,
}

impl Half {
    /// The 16-bit float type of dtype `d`, if it is one.
    pub fn of(d: DType) -> Option<Half> {
        match d {
            DType::F16 => Some(Half::F16),
            DType::BF16 => Some(Half::Bf16),
            _ => None,
        }
    }
}

/// Ordered comparisons (false on NaN) and the NaN test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pred {
    /// `a < b`.
    Lt,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a == b`.
    Eq,
    /// `a != b` (true when either is NaN).
    Neq,
    /// `a <= b`.
    Le,
    /// Either operand is NaN.
    Unord,
}

/// One operation of a [`Prog`]; operands are earlier values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// Group input `k` at the current position.
    Input(usize),
    /// Group input `k`, a `bool` array (one byte per position), at the
    /// current position: a lane mask, true where the byte is nonzero.
    InputMask(usize),
    /// Group input `k`, an array of 16-bit floats, at the current
    /// position, widened to `f32` (exact).
    InputHalf(usize, Half),
    /// Group input `k`, a `u8` array, at the current position: each byte
    /// zero-extended to a 32-bit integer lane.
    InputByte(usize),
    /// A constant, by its bit pattern as an element of the program's
    /// [`Elem`] (an `f32`'s 32 bits zero-extended).
    Const(u64),
    /// A two-operand operation.
    Bin(Bin, Val, Val),
    /// `a * b + c`, rounded once.
    Fma(Val, Val, Val),
    /// A one-operand operation.
    Un(Un, Val),
    /// A lane mask: `a pred b`.
    Cmp(Pred, Val, Val),
    /// A lane mask: `a pred b` of signed 32-bit integers (`Unord` is
    /// never recorded).
    ICmp(Pred, Val, Val),
    /// Both masks.
    MaskAnd(Val, Val),
    /// Either mask.
    MaskOr(Val, Val),
    /// The mask's complement.
    MaskNot(Val),
    /// `mask ? a : b` per lane.
    Blend(Val, Val, Val),
    /// `r`, a vector path's result for operands `a` and `b` (`b == a` for
    /// a one-operand function), except that when mask `slow` has a lane
    /// set, the generated code calls [`fix_lanes_sysv`] on `(a, b, r)`,
    /// which recomputes the lanes the vector path does not cover as the
    /// interpreter computes them: `(fix, a, b, r, slow)`. A call out of the
    /// loop that almost never runs, so such functions compile at any
    /// argument.
    Fix(Fix, Val, Val, Val, Val),
}

/// What a [`Node::Fix`] call recomputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fix {
    /// Lanes of `f` (sine, cosine, tangent) beyond
    /// [`TRIG_LIMIT`](simd_math::TRIG_LIMIT), in `f64`
    /// ([`fix_big_lanes`](simd_math::fix_big_lanes)).
    Big(Func),
    /// Every lane of `floor_divide(a, b)`, by the interpreter's scalar code.
    FloorDivide,
    /// Every lane of `remainder(a, b)`, by the interpreter's scalar code.
    Remainder,
    /// Every lane of `floor_divide(a, b)` of `f64` lanes.
    FloorDivide64,
    /// Every lane of `remainder(a, b)` of `f64` lanes.
    Remainder64,
    /// Every lane of `floor_divide(a, b)` of `i32` lanes.
    IntFloorDivide,
    /// Every lane of `remainder(a, b)` of `i32` lanes.
    IntRemainder,
    /// Every lane of `pow(a, b)` of `i32` lanes.
    IntPow,
    /// The lanes of an `f64` sine, cosine or tangent that the vector code
    /// leaves to the C library (NaN results of finite arguments; see
    /// [`sin_reduced`](crate::backend::cpu::math_f64::sin_reduced)): `f64` lanes.
    Library(Trig),
}

impl Fix {
    /// The number passed to [`fix_lanes_sysv`].
    pub fn code(self) -> usize {
        match self {
            Fix::Big(f) => Func::ALL.iter().position(|&g| g == f).expect("every function is in Func::ALL"),
            Fix::FloorDivide => 1000,
            Fix::Remainder => 1001,
            Fix::IntFloorDivide => 1002,
            Fix::IntRemainder => 1003,
            Fix::IntPow => 1004,
            Fix::FloorDivide64 => 1005,
            Fix::Remainder64 => 1006,
            Fix::Library(f) => 2000 + Trig::ALL.iter().position(|&g| g == f).expect("every function is in Trig::ALL"),
        }
    }
}

/// The call of a [`Node::Fix`]: `out` holds the vector path's results for
/// operands `a` and `b`, `lanes` 32-bit lanes each (`f32` or `i32`), or
/// `f64` lanes for codes 1005, 1006 and from 2000; `code` is [`Fix::code`]. Lanes are
/// recomputed in place as the interpreter computes them (an unknown `code`
/// changes nothing). Never panics or unwinds.
///
/// # Safety
/// `a` and `b` must be valid for reading and `out` for writing `lanes`
/// lanes of the code's width (and aligned to it); `out` must not overlap
/// `a` or `b`.
pub unsafe extern "sysv64" fn fix_lanes_sysv(a: *const f32, b: *const f32, out: *mut f32, lanes: usize, code: usize) {
    FIX_CALLS.fetch_add(1, Ordering::Relaxed);
    let f64_divmod: Option<fn(f64, f64) -> f64> = match code {
        1005 => Some(crate::backend::cpu::math::floordiv_f64),
        1006 => Some(crate::backend::cpu::math::rem_f64),
        _ => None,
    };
    if let Some(f) = f64_divmod {
        // SAFETY: the caller's contract, for f64 lanes.
        let (a, b, out) = unsafe {
            (
                std::slice::from_raw_parts(a.cast::<f64>(), lanes),
                std::slice::from_raw_parts(b.cast::<f64>(), lanes),
                std::slice::from_raw_parts_mut(out.cast::<f64>(), lanes),
            )
        };
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
        return;
    }
    if let Some(f) = Trig::ALL.get(code.wrapping_sub(2000)) {
        // SAFETY: the caller's contract, for f64 lanes.
        let (a, out) = unsafe {
            (
                std::slice::from_raw_parts(a.cast::<f64>(), lanes),
                std::slice::from_raw_parts_mut(out.cast::<f64>(), lanes),
            )
        };
        let library = f.library();
        for (o, &x) in out.iter_mut().zip(a) {
            *o = crate::backend::cpu::math_f64::library_if_nan(*o, x, library);
        }
        return;
    }
    // SAFETY: the caller's contract.
    let (a, b, out) = unsafe {
        (
            std::slice::from_raw_parts(a, lanes),
            std::slice::from_raw_parts(b, lanes),
            std::slice::from_raw_parts_mut(out, lanes),
        )
    };
    let scalar = |f: fn(f32, f32) -> f32, out: &mut [f32]| {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    // i32 lanes: the same bits, read as integers.
    let int = |f: fn(i32, i32) -> i32, out: &mut [f32]| {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f32::from_bits(f(x.to_bits() as i32, y.to_bits() as i32) as u32);
        }
    };
    match code {
        1000 => scalar(crate::backend::cpu::math::floordiv_f32, out),
        1001 => scalar(crate::backend::cpu::math::rem_f32, out),
        1002 => int(IntMath::floordiv_, out),
        1003 => int(IntMath::rem_, out),
        1004 => int(IntMath::pow_, out),
        _ => {
            if let Some(&f) = Func::ALL.get(code) {
                simd_math::fix_big_lanes(f, a, out);
            }
        }
    }
}

impl Node {
    /// The node with each operand `v` replaced by `f(v)`.
    pub fn map_operands(self, f: impl Fn(Val) -> Val) -> Node {
        match self {
            Node::Input(_) | Node::InputMask(_) | Node::InputHalf(..) | Node::InputByte(_) | Node::Const(_) => self,
            Node::Un(op, a) => Node::Un(op, f(a)),
            Node::MaskNot(a) => Node::MaskNot(f(a)),
            Node::Bin(op, a, b) => Node::Bin(op, f(a), f(b)),
            Node::Cmp(p, a, b) => Node::Cmp(p, f(a), f(b)),
            Node::ICmp(p, a, b) => Node::ICmp(p, f(a), f(b)),
            Node::MaskAnd(a, b) => Node::MaskAnd(f(a), f(b)),
            Node::MaskOr(a, b) => Node::MaskOr(f(a), f(b)),
            Node::Fma(a, b, c) => Node::Fma(f(a), f(b), f(c)),
            Node::Blend(m, a, b) => Node::Blend(f(m), f(a), f(b)),
            Node::Fix(g, a, b, r, m) => Node::Fix(g, f(a), f(b), f(r), f(m)),
        }
    }

    /// The values this node reads.
    pub fn operands(&self) -> Vec<Val> {
        match *self {
            Node::Input(_) | Node::InputMask(_) | Node::InputHalf(..) | Node::InputByte(_) | Node::Const(_) => vec![],
            Node::Un(_, a) | Node::MaskNot(a) => vec![a],
            Node::Bin(_, a, b)
            | Node::Cmp(_, a, b)
            | Node::ICmp(_, a, b)
            | Node::MaskAnd(a, b)
            | Node::MaskOr(a, b) => {
                vec![a, b]
            }
            Node::Fma(a, b, c) | Node::Blend(a, b, c) => vec![a, b, c],
            Node::Fix(_, a, b, r, m) => vec![a, b, r, m],
        }
    }
}

/// The element type of a program's vector values (masks aside): every
/// arithmetic operation, constant, input and output of one program is of
/// this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// `f32` lanes (also `float16`/`bfloat16` values, computed as `f32`).
    F32,
    /// `f64` lanes (half as many per vector).
    F64,
}

impl Elem {
    /// Bytes per lane.
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }

    /// The bits of `v` as an element of this type (exact: the constants a
    /// lowering records are `f32` values).
    fn bits(self, v: f32) -> u64 {
        match self {
            Elem::F32 => v.to_bits().into(),
            Elem::F64 => f64::from(v).to_bits(),
        }
    }
}

/// A lowered group: vector operations in SSA form, in execution order.
#[derive(Clone, Debug, PartialEq)]
pub struct Prog {
    /// The element type of every vector value.
    pub elem: Elem,
    /// The operations; node `i` defines value `i`.
    pub nodes: Vec<Node>,
    /// The group's inputs.
    pub inputs: usize,
    /// The value of each group output, in order: a mask value (a
    /// comparison, a logical op, a `bool` input) is a `bool` output, stored
    /// as one byte per position (0 or 1), any other is stored as
    /// [`out_store`](Prog::out_store) says.
    pub outputs: Vec<Val>,
    /// How each output that is not a mask is stored.
    pub out_store: Vec<Store>,
}

/// How an output's lanes are stored (each store is exact: the value is one
/// of the stored type's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Store {
    /// The lane as it is (`f32`, `i32` or `f64`).
    Lane,
    /// As a 16-bit float.
    Half(Half),
    /// The low byte of a 32-bit integer lane holding 0 to 255 (`u8`).
    Byte,
}

impl Prog {
    /// Whether value `v` is a lane mask (a `bool` value).
    pub fn is_mask(&self, v: Val) -> bool {
        matches!(
            self.nodes[v as usize],
            Node::Cmp(..)
                | Node::ICmp(..)
                | Node::MaskAnd(..)
                | Node::MaskOr(..)
                | Node::MaskNot(_)
                | Node::InputMask(_)
        )
    }

    /// A program of `nodes` reading `inputs` inputs, with `f32` or `bool`
    /// outputs `outputs`.
    pub fn new(nodes: Vec<Node>, inputs: usize, outputs: Vec<Val>) -> Prog {
        let out_store = vec![Store::Lane; outputs.len()];
        Prog { elem: Elem::F32, nodes, inputs, outputs, out_store }
    }
}

/// Records operations into a [`Prog`], merging repeated ones.
struct Recorder {
    nodes: Vec<Node>,
    seen: HashMap<Node, Val>,
    /// The level whose operations are recorded.
    level: Level,
    /// The element type recorded.
    elem: Elem,
}

impl Recorder {
    fn new(level: Level, elem: Elem) -> Recorder {
        Recorder { nodes: Vec::new(), seen: HashMap::new(), level, elem }
    }
}

thread_local! {
    /// The recorder [`Traced`] values write to (one lowering at a time per thread).
    static RECORDER: RefCell<Recorder> = RefCell::new(Recorder::new(Level::Avx512, Elem::F32));
}

/// Whether the recording is for AVX2 (else AVX-512).
fn recording_avx2() -> bool {
    RECORDER.with_borrow(|r| r.level == Level::Avx2)
}

/// The element type being recorded.
fn recording_elem() -> Elem {
    RECORDER.with_borrow(|r| r.elem)
}

/// Records an operation that only `f32` programs have (the bit tricks of
/// [`simd_math`]'s kernels, which `lower_op` never runs for `f64`).
fn record_f32_only(n: Node) -> Val {
    debug_assert_eq!(recording_elem(), Elem::F32, "an f32 bit trick recorded for an f64 program");
    record(n)
}

fn record(n: Node) -> Val {
    RECORDER.with_borrow_mut(|r| {
        if let Some(&v) = r.seen.get(&n) {
            return v;
        }
        let v = r.nodes.len() as Val;
        r.nodes.push(n);
        r.seen.insert(n, v);
        v
    })
}

/// A vector being recorded: operations on it append nodes to the recorder.
#[derive(Clone, Copy, Debug)]
pub struct Traced(Val);

/// A lane mask being recorded.
#[derive(Clone, Copy, Debug)]
pub struct TracedMask(Val);

impl Traced {
    fn bin(self, op: Bin, o: Traced) -> Traced {
        Traced(record(Node::Bin(op, self.0, o.0)))
    }
    fn un(self, op: Un) -> Traced {
        Traced(record(Node::Un(op, self.0)))
    }
    /// An operation on the bits of `f32` lanes (see [`record_f32_only`]).
    fn un_f32(self, op: Un) -> Traced {
        Traced(record_f32_only(Node::Un(op, self.0)))
    }
    fn bin_f32(self, op: Bin, o: Traced) -> Traced {
        Traced(record_f32_only(Node::Bin(op, self.0, o.0)))
    }
    fn cmp(self, p: Pred, o: Traced) -> TracedMask {
        TracedMask(record(Node::Cmp(p, self.0, o.0)))
    }
}

impl Vf32 for Traced {
    type M = TracedMask;
    fn splat(v: f32) -> Self {
        Traced(record(Node::Const(recording_elem().bits(v))))
    }
    fn add(self, o: Self) -> Self {
        self.bin(Bin::Add, o)
    }
    fn sub(self, o: Self) -> Self {
        self.bin(Bin::Sub, o)
    }
    fn mul(self, o: Self) -> Self {
        self.bin(Bin::Mul, o)
    }
    fn div(self, o: Self) -> Self {
        self.bin(Bin::Div, o)
    }
    fn recip(self) -> Self {
        // As the kernels of the level recorded for: AVX2 refines a 12-bit
        // estimate twice, AVX-512 a 14-bit one once.
        if recording_avx2() {
            let r = self.un_f32(Un::Rcp12);
            simd_math::newton_recip(self, simd_math::newton_recip(self, r))
        } else {
            simd_math::newton_recip(self, self.un_f32(Un::Rcp14))
        }
    }
    fn fma(self, b: Self, c: Self) -> Self {
        Traced(record(Node::Fma(self.0, b.0, c.0)))
    }
    fn min(self, o: Self) -> Self {
        self.bin(Bin::Min, o)
    }
    fn max(self, o: Self) -> Self {
        self.bin(Bin::Max, o)
    }
    fn round(self) -> Self {
        self.un(Un::Round)
    }
    fn floor(self) -> Self {
        self.un(Un::Floor)
    }
    fn and_bits(self, m: u32) -> Self {
        // The sign and magnitude masks (`abs`, `sign`) have an f64 form;
        // other masks are the f32 bit tricks of simd_math.
        let bits = match (recording_elem(), m) {
            (Elem::F64, 0x7fff_ffff) => 0x7fff_ffff_ffff_ffff,
            (Elem::F64, 0x8000_0000) => 0x8000_0000_0000_0000,
            (_, m) => return self.bin_f32(Bin::And, Traced(record(Node::Const(m.into())))),
        };
        self.bin(Bin::And, Traced(record(Node::Const(bits))))
    }
    fn xor(self, o: Self) -> Self {
        self.bin(Bin::Xor, o)
    }
    fn iadd(self, k: i32) -> Self {
        self.bin_f32(Bin::IAdd, Traced(record(Node::Const(u64::from(k as u32)))))
    }
    fn sra23(self) -> Self {
        self.un_f32(Un::Sra23)
    }
    fn pow2i(n: Self) -> Self {
        n.un_f32(Un::Pow2i)
    }
    fn lookup(self, table: Table) -> Self {
        self.un_f32(Un::Lookup(table))
    }
    fn scale_normal(self, j: Self, n: Self) -> Self {
        if recording_avx2() {
            self.mul(j.un_f32(Un::Shl(23)))
        } else {
            self.bin_f32(Bin::Scalef, n)
        }
    }
    fn scale_wide(self, j: Self, n: Self) -> Self {
        if recording_avx2() {
            // simd_math::scale_split, without recording its unused `n - k`.
            let neg = n.lt(Self::c(0.0));
            let k = Self::select(neg, Self::c(-64.0), Self::c(64.0));
            let far = Self::select(neg, Self::c(simd_math::SPLIT_DOWN), Self::c(simd_math::SPLIT_UP));
            self.mul(j.sub(k).un_f32(Un::Shl(23))).mul(far)
        } else {
            self.bin_f32(Bin::Scalef, n)
        }
    }
    fn lt(self, o: Self) -> TracedMask {
        self.cmp(Pred::Lt, o)
    }
    fn gt(self, o: Self) -> TracedMask {
        self.cmp(Pred::Gt, o)
    }
    fn ge(self, o: Self) -> TracedMask {
        self.cmp(Pred::Ge, o)
    }
    fn eq(self, o: Self) -> TracedMask {
        self.cmp(Pred::Eq, o)
    }
    fn is_nan(self) -> TracedMask {
        self.cmp(Pred::Unord, self)
    }
    fn mand(a: TracedMask, b: TracedMask) -> TracedMask {
        TracedMask(record(Node::MaskAnd(a.0, b.0)))
    }
    fn mor(a: TracedMask, b: TracedMask) -> TracedMask {
        TracedMask(record(Node::MaskOr(a.0, b.0)))
    }
    fn select(m: TracedMask, a: Self, b: Self) -> Self {
        Traced(record(Node::Blend(m.0, a.0, b.0)))
    }
}

/// An `f64` vector being recorded, for
/// [`math_f64`](crate::backend::cpu::math_f64)'s functions (a type of its
/// own: [`Traced`]'s operations are [`Vf32`]'s).
#[derive(Clone, Copy, Debug)]
struct Traced64(Val);

impl Traced64 {
    fn bin(self, op: Bin, o: Traced64) -> Traced64 {
        Traced64(record(Node::Bin(op, self.0, o.0)))
    }
    fn cmp(self, p: Pred, o: Traced64) -> TracedMask {
        TracedMask(record(Node::Cmp(p, self.0, o.0)))
    }
}

impl Vf64 for Traced64 {
    type M = TracedMask;
    fn splat(v: f64) -> Self {
        Traced64(record(Node::Const(v.to_bits())))
    }
    fn bits(b: u64) -> Self {
        Traced64(record(Node::Const(b)))
    }
    fn add(self, o: Self) -> Self {
        self.bin(Bin::Add, o)
    }
    fn sub(self, o: Self) -> Self {
        self.bin(Bin::Sub, o)
    }
    fn mul(self, o: Self) -> Self {
        self.bin(Bin::Mul, o)
    }
    fn div(self, o: Self) -> Self {
        self.bin(Bin::Div, o)
    }
    fn fma(self, b: Self, c: Self) -> Self {
        Traced64(record(Node::Fma(self.0, b.0, c.0)))
    }
    fn max(self, o: Self) -> Self {
        self.bin(Bin::Max, o)
    }
    fn min(self, o: Self) -> Self {
        self.bin(Bin::Min, o)
    }
    fn and(self, o: Self) -> Self {
        self.bin(Bin::And, o)
    }
    fn or(self, o: Self) -> Self {
        self.bin(Bin::Or, o)
    }
    fn iadd(self, o: Self) -> Self {
        self.bin(Bin::IAdd, o)
    }
    fn isub(self, o: Self) -> Self {
        self.bin(Bin::ISub, o)
    }
    fn shl(self, n: u8) -> Self {
        Traced64(record(Node::Un(Un::Shl(n), self.0)))
    }
    fn sra(self, n: u8) -> Self {
        Traced64(record(Node::Un(Un::Sra(n), self.0)))
    }
    fn lt(self, o: Self) -> TracedMask {
        self.cmp(Pred::Lt, o)
    }
    fn gt(self, o: Self) -> TracedMask {
        self.cmp(Pred::Gt, o)
    }
    fn ge(self, o: Self) -> TracedMask {
        self.cmp(Pred::Ge, o)
    }
    fn eq(self, o: Self) -> TracedMask {
        self.cmp(Pred::Eq, o)
    }
    fn select(m: TracedMask, a: Self, b: Self) -> Self {
        Traced64(record(Node::Blend(m.0, a.0, b.0)))
    }
    fn mnot(m: TracedMask) -> TracedMask {
        mask_not(m)
    }
}

/// An `f64` function of [`math_f64`](crate::backend::cpu::math_f64)
/// recorded on `x` (the trigonometric ones with a call for the lanes they
/// leave to the C library), or `None` for one it does not vectorize (the
/// interpreter runs it).
fn f64_function(u: UnaryOp, x: Traced) -> Option<Traced> {
    use crate::backend::cpu::math_f64 as m;
    let x = Traced64(x.0);
    let y = match u {
        UnaryOp::Exp => m::exp_v(x),
        UnaryOp::Expm1 => m::expm1_v(x),
        UnaryOp::Log => m::log_v(x),
        UnaryOp::Log1p => m::log1p_v(x),
        UnaryOp::Log2 => m::log2_v(x),
        UnaryOp::Log10 => m::log10_v(x),
        UnaryOp::Tanh => m::tanh_v(x),
        UnaryOp::Sigmoid => m::sigmoid_v(x),
        UnaryOp::Erf => m::erf_v(x),
        UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Tan => {
            // The vector code, and a call for the lanes it leaves to the C
            // library (NaN for a finite argument), as the tile kernel fixes them.
            let f = Trig::of(u)?;
            let r = m::trig_v(f, x);
            let library = Traced::mand(r.is_nan(), mask_not(x.is_nan()));
            return Some(Traced(record(Node::Fix(Fix::Library(f), x.0, x.0, r.0, library.0))));
        }
        _ => return None,
    };
    Some(Traced(y.0))
}

/// NaN-propagating maximum or minimum as the interpreter computes it
/// ([`max_nan`](crate::backend::cpu::math::max_nan)): `a` when it is NaN or
/// the operands are equal, `b` when it is NaN.
fn max_min_nan(a: Traced, b: Traced, op: Bin) -> Traced {
    // vmaxps(b, a) is `b > a ? b : a`: `a` on ties and when either is NaN.
    let m = b.bin(op, a);
    Traced::select(b.is_nan(), b, m)
}

/// `f(x)` for a function that reduces its argument by `π/2`: the vector
/// path, with the lanes beyond its range fixed by a call
/// ([`Node::Fix`]).
fn big_lanes(f: Func, x: Traced) -> Traced {
    let r = simd_math::eval_reduced(f, x);
    let big = x.abs().gt(Traced::splat(simd_math::TRIG_LIMIT));
    Traced(record(Node::Fix(Fix::Big(f), x.0, x.0, r.0, big.0)))
}

/// Python's `divmod` for `f32` as [`divmod_f32`](crate::backend::cpu::math::divmod_f32)
/// computes it, bit for bit, on the lanes where `a` is finite, `b` finite
/// and nonzero and `|a / b| < 2^22`: `(quotient, remainder, slow)`, with
/// `slow` the other lanes (recomputed by the scalar code through a
/// [`Node::Fix`] call). `fmod(a, b)` is exact there: `t = trunc(a / b)` is
/// the true quotient's integer part or one off, `a - t b` is computed by
/// one FMA with no rounding (a multiple of `b`'s ulp smaller than `2^24`
/// of them), and one step toward `[0, |b|)` (with `a`'s sign) is exact too.
/// In an `f64` program the same steps are `divmod_f64`'s, bit for bit, on
/// the lanes where `|a / b| < 2^51` (the same argument with 53 bits).
fn divmod(a: Traced, b: Traced) -> (Traced, Traced, TracedMask) {
    let c = Traced::splat;
    let zero = c(0.0);
    let qd = a.div(b);
    // trunc(qd)
    let t = Traced::select(qd.lt(zero), qd.un(Un::Ceil), qd.floor());
    let r = t.xor(c(-0.0)).fma(b, a);
    // The remainder in the frame where a is positive: into [0, |b|).
    let sa = a.sign();
    let ab = b.abs();
    let ra = r.xor(sa);
    let ra = Traced::select(ra.lt(zero), ra.add(ab), ra);
    let ra = Traced::select(ra.ge(ab), ra.sub(ab), ra);
    let m = ra.xor(sa);
    // divmod_f32 from fmod on: the remainder takes b's sign, the quotient
    // is (a - m) / b snapped to an integer.
    let div = a.sub(m).div(b);
    let flip = m.xor(b.sign()).lt(zero);
    let m1 = Traced::select(flip, m.add(b), m);
    let div = Traced::select(flip, div.sub(c(1.0)), div);
    let m = Traced::select(m.cmp(Pred::Eq, zero), b.sign(), m1);
    let f = div.floor();
    let q = Traced::select(div.sub(f).gt(c(0.5)), f.add(c(1.0)), f);
    let q = Traced::select(div.cmp(Pred::Neq, zero), q, qd.sign());
    let inf = c(f32::INFINITY);
    let finite = Traced::mand(a.abs().lt(inf), ab.lt(inf));
    let exact = if recording_elem() == Elem::F64 { 2_251_799_813_685_248.0 } else { 4_194_304.0 };
    let fast = Traced::mand(Traced::mand(finite, ab.gt(zero)), qd.abs().lt(c(exact)));
    (q, m, mask_not(fast))
}

/// A value of a group being recorded: a float vector (`f32`, or `f64` in
/// an `f64` program), an `i32` vector, or a lane mask for a `bool` value
/// (a comparison, a logical op), which stays a mask: bools are only ever
/// produced and consumed inside a compiled group.
#[derive(Clone, Copy, Debug)]
enum Reg {
    /// A float value.
    F(Traced),
    /// An `i32` value (32-bit programs only).
    I(Traced),
    /// A `u8` value: a 32-bit integer lane holding 0 to 255 (32-bit
    /// programs only).
    B(Traced),
    /// A `bool` value.
    M(TracedMask),
}

impl Reg {
    /// The value as a float vector (a bool is 1 or 0, as `astype` gives
    /// it; an `i32` rounded to the nearest `f32`).
    fn float(self) -> Traced {
        match self {
            Reg::F(x) => x,
            Reg::I(x) | Reg::B(x) => x.un(Un::IntToFloat),
            Reg::M(m) => Traced::select(m, Traced::splat(1.0), Traced::splat(0.0)),
        }
    }

    /// The value's truth as a mask (nonzero, NaN included, is true).
    fn mask(self) -> TracedMask {
        match self {
            Reg::F(x) => x.cmp(Pred::Neq, Traced::splat(0.0)),
            Reg::I(x) | Reg::B(x) => icmp(Pred::Neq, x, iconst(0)),
            Reg::M(m) => m,
        }
    }
}

/// An `i32` constant.
fn iconst(v: i32) -> Traced {
    Traced(record(Node::Const(u64::from(v as u32))))
}

/// An `i32` lane to an `f32` rounded to odd: `x` itself where the `f32`
/// holds it, else the `f32` next to `x` toward zero with its last bit set.
/// Rounding that to a format of at most 22 significant bits (bfloat16 has
/// 8), ties to even, gives `x` rounded once to that format: the `f32`'s
/// extra bits keep whether `x` was above, below or at a tie of the
/// format's values, and the odd last bit keeps that an inexact `x` is no
/// tie. The `f32` rounded to nearest (`f`) is `x`'s neighbour toward zero
/// or away from it; back as an integer (exact: an integer-valued `f32`,
/// or `i32::MIN` for `2^31`, whose difference from `x` still has the sign
/// of `f - x`), its difference from `x` tells which. Stepping an `f32`'s
/// bits down by one steps its magnitude down to the next `f32`.
fn int_to_float_odd(x: Traced) -> Traced {
    let f = x.un(Un::IntToFloat);
    let back = f.un(Un::FloatToIntTrunc);
    let exact = icmp(Pred::Eq, back, x);
    let d = ibin(Bin::ISub, back, x);
    let zero = iconst(0);
    let nonneg = icmp(Pred::Ge, x, zero);
    let away = Traced::mor(
        Traced::mand(nonneg, icmp(Pred::Gt, d, zero)),
        Traced::mand(mask_not(nonneg), icmp(Pred::Lt, d, zero)),
    );
    let toward_zero = Traced::select(away, ibin(Bin::ISub, f, iconst(1)), f);
    let odd = icmp(Pred::Lt, toward_zero.un(Un::Shl(31)), zero);
    let rounded = Traced::select(odd, toward_zero, ibin(Bin::IAdd, toward_zero, iconst(1)));
    Traced::select(exact, f, rounded)
}

/// `a op b` on `i32` lanes.
fn ibin(op: Bin, a: Traced, b: Traced) -> Traced {
    Traced(record(Node::Bin(op, a.0, b.0)))
}

/// `a pred b` on `i32` lanes.
fn icmp(p: Pred, a: Traced, b: Traced) -> TracedMask {
    TracedMask(record(Node::ICmp(p, a.0, b.0)))
}

/// An `f32` truncated toward zero to an `i32` as `as` converts it:
/// saturating, NaN to 0.
fn float_to_int(x: Traced) -> Traced {
    // The conversion gives i32::MIN out of range and for NaN: right below.
    let t = x.un(Un::FloatToIntTrunc);
    let t = Traced::select(x.ge(Traced::splat(2_147_483_648.0)), iconst(i32::MAX), t);
    Traced::select(x.is_nan(), iconst(0), t)
}

/// An `f32` truncated toward zero to a `u8` as `as` converts it:
/// saturating at 0 and 255, NaN to 0. Clamped first (`vmaxps` gives its
/// second operand, 0, for NaN), then truncated, exactly.
fn float_to_byte(x: Traced) -> Traced {
    x.max(Traced::splat(0.0)).min(Traced::splat(255.0)).un(Un::FloatToIntTrunc)
}

/// The low byte of an integer lane: `u8` wrapping arithmetic.
fn low_byte(x: Traced) -> Traced {
    ibin(Bin::And, x, iconst(0xff))
}

/// The recorded value of an op whose operands (the values of `where`) are
/// `u8`, as [`IntMath`] computes it for `u8`: [`lower_int_op`] on the
/// lanes (of 0 to 255, where the `i32` and `u8` operations agree:
/// quotients and remainders are exact on the vector path, signs are 0 or
/// 1), then the low byte of a result that can leave the range (sums,
/// differences, products, negation, powers: wrapping modulo 2^32, then
/// modulo 256, is wrapping modulo 256). `None`: the interpreter.
fn lower_byte_op(prim: &Primitive, a: &[Reg]) -> Option<Reg> {
    let lane = || match a[0] {
        Reg::B(x) => Some(x),
        _ => None,
    };
    match *prim {
        Primitive::AsType(DType::U8) => return Some(Reg::B(lane()?)),
        Primitive::AsType(DType::I32) => return Some(Reg::I(lane()?)),
        // Exact: 0 to 255 are values of f32 and of both 16-bit floats.
        Primitive::AsType(DType::F32 | DType::F16 | DType::BF16) => return Some(Reg::F(a[0].float())),
        _ => {}
    }
    let ints: Vec<Reg> = a.iter().map(|&r| if let Reg::B(x) = r { Reg::I(x) } else { r }).collect();
    let wraps = matches!(
        prim,
        Primitive::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Pow)
            | Primitive::Unary(UnaryOp::Neg | UnaryOp::Square)
    );
    // An integer result of an op on u8 values is a u8.
    Some(match lower_int_op(prim, &ints)? {
        Reg::I(x) => Reg::B(if wraps { low_byte(x) } else { x }),
        r => r,
    })
}

/// The recorded value of an op whose operands (the values of `where`) are
/// `i32`: wrapping arithmetic, `maximum`/`minimum`, `abs`, `sign`,
/// comparisons, logical ops, `where` and casts to `f32`, the 16-bit
/// floats and `bool`, or `None` (the interpreter).
fn lower_int_op(prim: &Primitive, a: &[Reg]) -> Option<Reg> {
    let i = |k: usize| match a[k] {
        Reg::I(x) => Some(x),
        _ => None,
    };
    Some(match *prim {
        Primitive::AsType(DType::I32) => Reg::I(i(0)?),
        // Wrapping, as `as` narrows an integer.
        Primitive::AsType(DType::U8) => Reg::B(low_byte(i(0)?)),
        // To float16 through f32 (`record_group` rounds it): one rounding,
        // as the interpreter's, since an i32 that f32 rounds (|x| > 2^24)
        // is far beyond float16's range. To bfloat16 through an f32
        // rounded to odd, which the rounding to bfloat16 then rounds as
        // the exact value would be.
        Primitive::AsType(DType::F32 | DType::F16) => Reg::F(a[0].float()),
        Primitive::AsType(DType::BF16) => Reg::F(int_to_float_odd(i(0)?)),
        Primitive::AsType(DType::Bool) => Reg::M(a[0].mask()),
        Primitive::Where => Reg::I(Traced::select(a[0].mask(), i(1)?, i(2)?)),
        Primitive::Unary(UnaryOp::LogicalNot) => Reg::M(mask_not(a[0].mask())),
        Primitive::Unary(u) => {
            let x = i(0)?;
            match u {
                UnaryOp::Neg => Reg::I(ibin(Bin::ISub, iconst(0), x)),
                UnaryOp::Abs => Reg::I(x.un(Un::IAbs)),
                UnaryOp::Square => Reg::I(ibin(Bin::IMul, x, x)),
                UnaryOp::Sign => {
                    let neg = Traced::select(icmp(Pred::Lt, x, iconst(0)), iconst(-1), iconst(0));
                    Reg::I(Traced::select(icmp(Pred::Gt, x, iconst(0)), iconst(1), neg))
                }
                UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => Reg::I(x),
                UnaryOp::IsNan | UnaryOp::IsInf => Reg::M(icmp(Pred::Neq, x, x)),
                UnaryOp::IsFinite => Reg::M(icmp(Pred::Eq, x, x)),
                _ => return None,
            }
        }
        Primitive::Binary(BinaryOp::LogicalAnd) => Reg::M(Traced::mand(a[0].mask(), a[1].mask())),
        Primitive::Binary(BinaryOp::LogicalOr) => Reg::M(Traced::mor(a[0].mask(), a[1].mask())),
        Primitive::Binary(b) => {
            let (x, y) = (i(0)?, i(1)?);
            let bin = |op| Reg::I(ibin(op, x, y));
            let cmp = |p| Reg::M(icmp(p, x, y));
            match b {
                BinaryOp::Add => bin(Bin::IAdd),
                BinaryOp::Sub => bin(Bin::ISub),
                BinaryOp::Mul => bin(Bin::IMul),
                BinaryOp::Maximum => bin(Bin::IMax),
                BinaryOp::Minimum => bin(Bin::IMin),
                BinaryOp::FloorDivide | BinaryOp::Remainder => {
                    let (q, r, slow) = int_divmod(x, y);
                    let (fix, v) =
                        if b == BinaryOp::FloorDivide { (Fix::IntFloorDivide, q) } else { (Fix::IntRemainder, r) };
                    Reg::I(Traced(record(Node::Fix(fix, x.0, y.0, v.0, slow.0))))
                }
                BinaryOp::Pow => {
                    let (p, slow) = int_pow(x, y);
                    Reg::I(Traced(record(Node::Fix(Fix::IntPow, x.0, y.0, p.0, slow.0))))
                }
                BinaryOp::Equal => cmp(Pred::Eq),
                BinaryOp::NotEqual => cmp(Pred::Neq),
                BinaryOp::Less => cmp(Pred::Lt),
                BinaryOp::LessEqual => cmp(Pred::Le),
                BinaryOp::Greater => cmp(Pred::Gt),
                BinaryOp::GreaterEqual => cmp(Pred::Ge),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Floor division and remainder of `i32` lanes as
/// [`IntMath`](crate::backend::cpu::math::IntMath) computes them, on the
/// lanes where `|a| < 2^24`: `(quotient, remainder, slow)`, with `slow` the
/// other lanes (recomputed by the scalar code through a [`Node::Fix`] call).
///
/// There `a` is an `f32` exactly and the quotient is `floor(a / b)` of the
/// `f32` division, exactly: if `b` is an `f32` too, the true quotient is an
/// integer (then the division is exact) or at least `1 / |b|` from one,
/// while the division's rounding error is at most `|a / b| 2^-24 <
/// 1 / |b|`, and integers are `f32`s, so rounding cannot reach or cross
/// one; if `|b| >= 2^24` (rounded to an `f32` of the same sign), `|a / b| <
/// 1` either way and the floor is 0 or -1 by the signs alone. The
/// remainder is `a - q b` in wrapping arithmetic, exact. Division by zero
/// gives 0 for both, as the scalar code.
fn int_divmod(a: Traced, b: Traced) -> (Traced, Traced, TracedMask) {
    let (fa, fb) = (a.un(Un::IntToFloat), b.un(Un::IntToFloat));
    let q = fa.div(fb).floor().un(Un::FloatToIntTrunc);
    let r = ibin(Bin::ISub, a, ibin(Bin::IMul, q, b));
    let zero = icmp(Pred::Eq, b, iconst(0));
    let q = Traced::select(zero, iconst(0), q);
    let r = Traced::select(zero, iconst(0), r);
    const EXACT: i32 = 1 << 24;
    let fast = Traced::mand(icmp(Pred::Gt, a, iconst(-EXACT)), icmp(Pred::Lt, a, iconst(EXACT)));
    (q, r, mask_not(fast))
}

/// `a^e` of `i32` lanes as
/// [`IntMath`](crate::backend::cpu::math::IntMath) computes it (wrapping
/// products by binary powering), on the lanes where `0 <= e < 32`:
/// `(power, slow)`, with `slow` the other lanes (a [`Node::Fix`] call:
/// negative exponents, whose results are 0 or `±1`, and larger ones, which
/// wrap to 0 for any even base). Five rounds of square-and-multiply are
/// the scalar loop's products for such `e`, in its order, so wrapped
/// results agree too. (A broadcast exponent's five bit masks and `slow`
/// live through the loop in the six mask registers of AVX-512 kernels.)
fn int_pow(a: Traced, e: Traced) -> (Traced, TracedMask) {
    // `slow` first: its two comparisons are dead before the bit masks exist.
    let slow = Traced::mor(icmp(Pred::Lt, e, iconst(0)), icmp(Pred::Gt, e, iconst(31)));
    let mut acc = a;
    let mut base = a;
    for bit in 0..5 {
        let set = icmp(Pred::Neq, ibin(Bin::And, e, iconst(1 << bit)), iconst(0));
        acc = match bit {
            0 => Traced::select(set, a, iconst(1)),
            _ => Traced::select(set, ibin(Bin::IMul, acc, base), acc),
        };
        if bit < 4 {
            base = ibin(Bin::IMul, base, base);
        }
    }
    (acc, slow)
}

/// `x op y` of two `bool` values as the interpreter computes it: `+` and
/// `maximum` are `or`, `*` and `minimum` are `and`, comparisons order
/// false before true; `None` for any other op.
fn lower_mask_op(op: BinaryOp, x: TracedMask, y: TracedMask) -> Option<TracedMask> {
    let either = Traced::mor(x, y);
    let both = Traced::mand(x, y);
    let differ = Traced::mand(either, mask_not(both));
    Some(match op {
        BinaryOp::Add | BinaryOp::Maximum => either,
        BinaryOp::Mul | BinaryOp::Minimum => both,
        BinaryOp::Equal => mask_not(differ),
        BinaryOp::NotEqual => differ,
        BinaryOp::Less => Traced::mand(mask_not(x), y),
        BinaryOp::LessEqual => Traced::mor(mask_not(x), y),
        BinaryOp::Greater => Traced::mand(x, mask_not(y)),
        BinaryOp::GreaterEqual => Traced::mor(x, mask_not(y)),
        _ => return None,
    })
}

/// The complement of a mask.
fn mask_not(m: TracedMask) -> TracedMask {
    TracedMask(record(Node::MaskNot(m.0)))
}

/// The recorded value of one op, or `None` when it has no lowering:
/// arithmetic and (for `f32` programs) math, and the `bool` values of
/// comparisons, logical ops and `isnan`/`isinf`/`isfinite`, consumed by
/// `where`, logical ops or `astype`.
fn lower_op(prim: &Primitive, a: &[Reg]) -> Option<Reg> {
    let one = || Traced::splat(1.0);
    let inf = || Traced::splat(f32::INFINITY);
    // An f32 operand (an integer or bool one declines here: ops of two
    // bools are mask operations, below).
    let f = |k: usize| match a[k] {
        Reg::F(x) => Some(x),
        Reg::I(_) | Reg::B(_) | Reg::M(_) => None,
    };
    // Ops on integer values (the values of `where`, the operand of anything else).
    let values = if matches!(prim, Primitive::Where) { &a[1..] } else { a };
    if values.iter().any(|r| matches!(r, Reg::B(_))) {
        return lower_byte_op(prim, a);
    }
    if values.iter().any(|r| matches!(r, Reg::I(_))) {
        return lower_int_op(prim, a);
    }
    // f64 programs take their functions from math_f64 (simd_math's are
    // f32 approximations); `divmod` is f32 only.
    let f64 = recording_elem() == Elem::F64;
    Some(match *prim {
        // To a 16-bit float: the value, rounded by `record_group`. (A cast
        // to a float type is from a float of the program's width, or from
        // bool: `record_group` admits no other mix.)
        Primitive::AsType(DType::F32 | DType::F16 | DType::BF16 | DType::F64) => Reg::F(a[0].float()),
        Primitive::AsType(DType::I32) => Reg::I(match a[0] {
            Reg::M(m) => Traced::select(m, iconst(1), iconst(0)),
            _ => float_to_int(f(0)?),
        }),
        Primitive::AsType(DType::U8) if !f64 => Reg::B(match a[0] {
            Reg::M(m) => Traced::select(m, iconst(1), iconst(0)),
            _ => float_to_byte(f(0)?),
        }),
        Primitive::AsType(DType::Bool) => Reg::M(a[0].mask()),
        Primitive::Where => Reg::F(Traced::select(a[0].mask(), f(1)?, f(2)?)),
        Primitive::Unary(u) => {
            if u == UnaryOp::LogicalNot {
                return Some(Reg::M(mask_not(a[0].mask())));
            }
            if let Reg::M(m) = a[0] {
                // A bool is never NaN nor infinite.
                let never = Traced::mand(m, mask_not(m));
                return match u {
                    UnaryOp::IsNan | UnaryOp::IsInf => Some(Reg::M(never)),
                    UnaryOp::IsFinite => Some(Reg::M(mask_not(never))),
                    _ => None,
                };
            }
            let x = f(0)?;
            Reg::F(match u {
                UnaryOp::Neg => x.xor(Traced::splat(-0.0)),
                UnaryOp::Abs => x.abs(),
                UnaryOp::Square => x.mul(x),
                UnaryOp::Sqrt => x.un(Un::Sqrt),
                UnaryOp::Rsqrt => one().div(x.un(Un::Sqrt)),
                UnaryOp::Reciprocal => one().div(x),
                UnaryOp::Floor => x.un(Un::Floor),
                UnaryOp::Ceil => x.un(Un::Ceil),
                UnaryOp::Round => x.un(Un::Round),
                // 1 above 0, -1 below, x itself otherwise (±0 and NaN kept).
                UnaryOp::Sign => {
                    let neg = Traced::select(x.lt(Traced::splat(0.0)), Traced::splat(-1.0), x);
                    Traced::select(x.gt(Traced::splat(0.0)), one(), neg)
                }
                UnaryOp::IsNan => return Some(Reg::M(x.is_nan())),
                UnaryOp::IsInf => return Some(Reg::M(x.abs().cmp(Pred::Eq, inf()))),
                UnaryOp::IsFinite => return Some(Reg::M(x.abs().cmp(Pred::Lt, inf()))),
                _ if f64 => f64_function(u, x)?,
                _ => {
                    let func = crate::backend::cpu::unary::simd_func(u)?;
                    match simd_math::eval(func, x) {
                        Some(r) => r,
                        None => big_lanes(func, x),
                    }
                }
            })
        }
        Primitive::Binary(b) => {
            match b {
                BinaryOp::LogicalAnd => return Some(Reg::M(Traced::mand(a[0].mask(), a[1].mask()))),
                BinaryOp::LogicalOr => return Some(Reg::M(Traced::mor(a[0].mask(), a[1].mask()))),
                _ => {}
            }
            if let (Reg::M(x), Reg::M(y)) = (a[0], a[1]) {
                return lower_mask_op(b, x, y).map(Reg::M);
            }
            let (x, y) = (f(0)?, f(1)?);
            match b {
                BinaryOp::Add => Reg::F(x.add(y)),
                BinaryOp::Sub => Reg::F(x.sub(y)),
                BinaryOp::Mul => Reg::F(x.mul(y)),
                BinaryOp::Div => Reg::F(x.div(y)),
                BinaryOp::Pow if f64 => {
                    Reg::F(Traced(crate::backend::cpu::math_f64::pow_v(Traced64(x.0), Traced64(y.0)).0))
                }
                BinaryOp::Pow => Reg::F(simd_math::pow_v(x, y)),
                BinaryOp::Atan2 if f64 => {
                    Reg::F(Traced(crate::backend::cpu::math_f64::atan2_v(Traced64(x.0), Traced64(y.0)).0))
                }
                BinaryOp::Atan2 => Reg::F(simd_math::atan2_v(x, y)),
                BinaryOp::FloorDivide | BinaryOp::Remainder => {
                    let (q, m, slow) = divmod(x, y);
                    let (fix, r) = match (b == BinaryOp::FloorDivide, f64) {
                        (true, false) => (Fix::FloorDivide, q),
                        (false, false) => (Fix::Remainder, m),
                        (true, true) => (Fix::FloorDivide64, q),
                        (false, true) => (Fix::Remainder64, m),
                    };
                    Reg::F(Traced(record(Node::Fix(fix, x.0, y.0, r.0, slow.0))))
                }
                BinaryOp::Maximum => Reg::F(max_min_nan(x, y, Bin::Max)),
                BinaryOp::Minimum => Reg::F(max_min_nan(x, y, Bin::Min)),
                BinaryOp::Equal => Reg::M(x.cmp(Pred::Eq, y)),
                BinaryOp::NotEqual => Reg::M(x.cmp(Pred::Neq, y)),
                BinaryOp::Less => Reg::M(x.cmp(Pred::Lt, y)),
                BinaryOp::LessEqual => Reg::M(x.cmp(Pred::Le, y)),
                BinaryOp::Greater => Reg::M(x.cmp(Pred::Gt, y)),
                BinaryOp::GreaterEqual => Reg::M(x.cmp(Pred::Ge, y)),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Most inputs of a compiled kernel (the size of [`InputSet`]); outputs
/// are not limited. A group with more inputs runs on the interpreter.
pub const MAX_INPUTS: usize = 256;

/// A set of a kernel's inputs, by index (below [`MAX_INPUTS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InputSet([u64; MAX_INPUTS / 64]);

impl InputSet {
    /// The empty set.
    pub const EMPTY: InputSet = InputSet([0; MAX_INPUTS / 64]);

    /// Adds input `k`.
    pub fn insert(&mut self, k: usize) {
        self.0[k / 64] |= 1 << (k % 64);
    }

    /// Whether input `k` is in the set.
    pub fn contains(&self, k: usize) -> bool {
        self.0[k / 64] >> (k % 64) & 1 == 1
    }
}

/// Records group `g` as a [`Prog`] for this CPU's code generator (see
/// [`lower_at`]), or `None` when it is not compiled (see the module docs).
pub fn lower(g: &FusedGroup) -> Option<Prog> {
    lower_at(g, recording_level())
}

/// Records group `g` as a [`Prog`] of the operations that the `level`
/// kernels of [`simd_math`] run (`Level::Avx2`, or else AVX-512's), or
/// `None` when it is not compiled.
pub fn lower_at(g: &FusedGroup, level: Level) -> Option<Prog> {
    record_group(g, level).ok()
}

/// The level programs are recorded for on this CPU: AVX2 where that is the
/// best [`simd_math`] level, else AVX-512 (no code is generated for a CPU
/// with neither).
fn recording_level() -> Level {
    match simd_math::detected_level() {
        Level::Avx2 => Level::Avx2,
        _ => Level::Avx512,
    }
}

/// Why a group is not compiled.
#[derive(Clone, Copy, Debug)]
enum NotCompiled {
    DType,
    TooManyInputs,
    NoLowering(&'static str, Elem),
}

impl std::fmt::Display for NotCompiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCompiled::DType => f.write_str(
                "a value is not f32, i32, u8, bool or a 16-bit float, and the group is not of f64 and bool only",
            ),
            NotCompiled::TooManyInputs => write!(f, "more than {MAX_INPUTS} inputs"),
            NotCompiled::NoLowering(op, Elem::F32) => write!(f, "{op} has no vector lowering"),
            NotCompiled::NoLowering(op, Elem::F64) => write!(f, "{op} has no f64 vector lowering"),
        }
    }
}

/// Records group `g`, or says why it is not compiled.
fn record_group(g: &FusedGroup, level: Level) -> Result<Prog, NotCompiled> {
    // Values are f32, i32, u8 (32-bit integer lanes) or bool (lane masks),
    // or 16-bit floats computed as f32 and rounded after each op. A group
    // with an f64 value is an f64 program: then every value is f64 or bool.
    let n_in = g.inputs.len();
    let io = || g.inputs.iter().copied().chain(g.outputs.iter().map(|&r| g.reg_dtype(r)));
    let elem = if io().chain(g.ops.iter().map(|o| o.dtype)).any(|d| d == DType::F64) { Elem::F64 } else { Elem::F32 };
    let value = |d: DType| match elem {
        Elem::F32 => matches!(d, DType::F32 | DType::I32 | DType::U8) || Half::of(d).is_some(),
        Elem::F64 => d == DType::F64,
    };
    if !g.ops.iter().all(|o| o.dtype == DType::Bool || value(o.dtype)) || !io().all(|d| value(d) || d == DType::Bool) {
        return Err(NotCompiled::DType);
    }
    if n_in > MAX_INPUTS {
        return Err(NotCompiled::TooManyInputs);
    }
    let level = if level == Level::Avx2 { Level::Avx2 } else { Level::Avx512 };
    RECORDER.with_borrow_mut(|r| *r = Recorder::new(level, elem));
    let mut regs: Vec<Reg> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &d)| match d {
            DType::Bool => Reg::M(TracedMask(record(Node::InputMask(k)))),
            DType::I32 => Reg::I(Traced(record(Node::Input(k)))),
            DType::U8 => Reg::B(Traced(record(Node::InputByte(k)))),
            d => match Half::of(d) {
                Some(h) => Reg::F(Traced(record(Node::InputHalf(k, h)))),
                None => Reg::F(Traced(record(Node::Input(k)))),
            },
        })
        .collect();
    for op in &g.ops {
        let args: Vec<Reg> = op.args.iter().map(|&r| regs[r]).collect();
        match (lower_op(&op.prim, &args), Half::of(op.dtype)) {
            (Some(v), None)
                if matches!(
                    (v, op.dtype),
                    (Reg::F(_), DType::F32 | DType::F64)
                        | (Reg::I(_), DType::I32)
                        | (Reg::B(_), DType::U8)
                        | (Reg::M(_), DType::Bool)
                ) =>
            {
                regs.push(v)
            }
            // An op of 16-bit floats: its f32 result rounded, as the
            // interpreter rounds it (unless that cannot change it).
            (Some(Reg::F(x)), Some(h)) => {
                regs.push(Reg::F(if exact_in_half(op, g) { x } else { x.un(Un::Narrow(h)) }));
            }
            _ => {
                RECORDER.with_borrow_mut(|r| *r = Recorder::new(level, Elem::F32));
                return Err(NotCompiled::NoLowering(op.prim.name(), elem));
            }
        }
    }
    let outputs = g
        .outputs
        .iter()
        .map(|&r| match regs[r] {
            Reg::F(x) | Reg::I(x) | Reg::B(x) => x.0,
            Reg::M(m) => m.0,
        })
        .collect();
    let out_store = g
        .outputs
        .iter()
        .map(|&r| match g.reg_dtype(r) {
            DType::U8 => Store::Byte,
            d => Half::of(d).map_or(Store::Lane, Store::Half),
        })
        .collect();
    let nodes = RECORDER.with_borrow_mut(|r| std::mem::replace(r, Recorder::new(level, Elem::F32)).nodes);
    Ok(Prog { elem, nodes, inputs: n_in, outputs, out_store })
}

/// Whether op `op` of `g`, of a 16-bit float dtype, gives a value of that
/// type whenever its operands are (so its `f32` result needs no rounding):
/// moves, sign changes, rounding to integers, and conversions from the
/// same type, from `bool` or from `u8`.
fn exact_in_half(op: &FusedOp, g: &FusedGroup) -> bool {
    match op.prim {
        Primitive::Unary(u) => {
            matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round)
        }
        Primitive::Binary(b) => matches!(b, BinaryOp::Maximum | BinaryOp::Minimum),
        Primitive::Where => true,
        Primitive::AsType(t) => {
            let from = g.reg_dtype(op.args[0]);
            from == t || from == DType::Bool || from == DType::U8
        }
        _ => false,
    }
}

/// How group `g` runs, for `explain`: as machine code (with the number of
/// vector operations per vector) or on the tile interpreter, and why.
pub fn describe(g: &CpuGroup) -> String {
    if !enabled() {
        return "tile interpreter (the code generator needs AVX2 and FMA or AVX-512; KILN_JIT=0 turns it off)".into();
    }
    if let Err(why) = record_group(g, recording_level()) {
        return format!("tile interpreter ({why})");
    }
    let Some(c) = g.code.get(g) else { return "tile interpreter".into() };
    if c.kernel(Variant { bcast: InputSet::EMPTY, prefetch: 0 }).is_none() {
        return "tile interpreter (more live values than vector registers)".into();
    }
    let ops = c.vector_ops();
    let bytes = if target() == Some(Level::Avx2) { 32 } else { 64 };
    let lanes = bytes / c.prog.elem.bytes();
    format!("machine code ({ops} vector operations per {lanes} lanes)")
}

/// The instruction set kernels are generated for here: `Level::Avx512` or
/// `Level::Avx2` (the CPU's best [`simd_math`] level), or `None` when
/// nothing is compiled (a CPU with neither, not x86-64, or `KILN_JIT=0`).
pub fn target() -> Option<Level> {
    static TARGET: OnceLock<Option<Level>> = OnceLock::new();
    *TARGET.get_or_init(|| {
        let level = simd_math::detected_level();
        let on = cfg!(target_arch = "x86_64")
            && matches!(level, Level::Avx512 | Level::Avx2)
            && std::env::var("KILN_JIT").map_or(true, |v| v != "0");
        on.then_some(level)
    })
}

/// Whether kernels are compiled here (see [`target`]).
pub fn enabled() -> bool {
    target().is_some()
}

thread_local! {
    /// Set while [`interpreted`] runs on this thread.
    static INTERPRETED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with code generation off on this thread: the eager elementwise
/// ops it evaluates run on the tile interpreter, the reference that
/// generated code must equal bit for bit (for tests that compare the two).
/// An eager op chooses on the calling thread, so the helper threads that
/// share its work follow; a compiled function's row-blocked chains choose
/// on the helpers and may still run generated code.
pub fn interpreted<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INTERPRETED.set(self.0);
        }
    }
    let _restore = Restore(INTERPRETED.replace(true));
    f()
}

/// Prepares code generation on a background thread, once per process. The
/// assembler builds its instruction tables on first use (about half a
/// millisecond); done early, on the first elementwise work of any kind,
/// this is off the first compiled call's path. Returns at once.
pub fn warm_up() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        if !enabled() {
            return;
        }
        let spawned = std::thread::Builder::new().name("kiln-jit-warm-up".into()).spawn(|| {
            let p = Prog::new(vec![Node::Input(0), Node::Bin(Bin::Add, 0, 0)], 1, vec![1]);
            generate(&p, Variant { bcast: InputSet::EMPTY, prefetch: 0 })
        });
        if let Err(e) = spawned {
            log::debug!("kiln: no code generation warm-up thread ({e}); the first kernel pays for it");
        }
    });
}

/// A compiled kernel: `run(ins, outs, len)` computes `len` positions,
/// reading input `k` from `ins[k]` (`len` elements, or one element when
/// the input is broadcast) and writing output `j` to `outs[j]`.
pub struct Kernel {
    #[cfg(target_arch = "x86_64")]
    code: crate::backend::cpu::jit_code::Code,
}

impl Kernel {
    /// Runs the kernel.
    ///
    /// # Safety
    /// `ins[k]` must be valid for reading `len` `f32` (one, for the inputs
    /// this kernel was compiled to broadcast), `outs[j]` valid for writing
    /// `len` `f32`, and no output may overlap an input except at the very
    /// same positions.
    pub unsafe fn run(&self, ins: &[*const f32], outs: &[*mut f32], len: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller; the code was generated for this
        // program's numbers of inputs and outputs, which the asserts check.
        unsafe {
            self.code.run(ins, outs, len)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("kernels are only compiled on x86_64 ({ins:?}, {outs:?}, {len})")
    }
}

/// What a kernel is specialized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The broadcast inputs (one value each, loaded before the loop).
    pub bcast: InputSet,
    /// Prefetch the inputs read in place this many bytes ahead (0: none):
    /// a few KiB when they stream from memory (the run is larger than the
    /// caches), or a whole block when the next block of rows of a
    /// row-blocked chain follows (see [`row_chain`](crate::backend::cpu::row_chain)).
    pub prefetch: i32,
}

static GENERATED: AtomicUsize = AtomicUsize::new(0);
static DECLINED: AtomicUsize = AtomicUsize::new(0);
static FIX_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Calls from generated code to [`fix_lanes_sysv`] so far in this process
/// (a vector with a lane that its vector path does not cover): for tests
/// that the vector path alone runs on ordinary lanes.
pub fn fix_calls() -> usize {
    FIX_CALLS.load(Ordering::Relaxed)
}

/// Kernels generated so far in this process, and programs for which code
/// generation declined (they ran on the interpreter): for tests and
/// diagnostics.
pub fn counts() -> (usize, usize) {
    (GENERATED.load(Ordering::Relaxed), DECLINED.load(Ordering::Relaxed))
}

/// A group's lowered program and its kernels, one per [`Variant`].
pub struct Compiled {
    prog: Prog,
    kernels: Mutex<Vec<(Variant, Option<Arc<Kernel>>)>>,
}

impl Compiled {
    /// Vector operations per vector of output (inputs and constants not
    /// counted): how much the kernel computes per byte it moves.
    pub fn vector_ops(&self) -> usize {
        self.prog
            .nodes
            .iter()
            .filter(|n| {
                !matches!(
                    n,
                    Node::Input(_) | Node::InputMask(_) | Node::InputHalf(..) | Node::InputByte(_) | Node::Const(_)
                )
            })
            .count()
    }

    /// The kernel for variant `v`, compiled on first use; `None` when code
    /// generation declines (too many live values).
    pub fn kernel(&self, v: Variant) -> Option<Arc<Kernel>> {
        let mut ks = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = ks.iter().find(|(m, _)| *m == v) {
            return k.clone();
        }
        let k = generate(&self.prog, v).map(Arc::new);
        let counter = if k.is_some() { &GENERATED } else { &DECLINED };
        counter.fetch_add(1, Ordering::Relaxed);
        ks.push((v, k.clone()));
        k
    }
}

#[cfg(target_arch = "x86_64")]
fn generate(p: &Prog, v: Variant) -> Option<Kernel> {
    use crate::backend::cpu::{jit_avx2, jit_x86};
    let code = if target() == Some(Level::Avx2) { jit_avx2::generate(p, v) } else { jit_x86::generate(p, v) };
    Some(Kernel { code: code? })
}

#[cfg(not(target_arch = "x86_64"))]
fn generate(_: &Prog, _: Variant) -> Option<Kernel> {
    None
}

/// The compiled form of a group, made on its first run (a compiled
/// function's groups are compiled once) and shared by clones made after it.
/// Empty, it allocates nothing.
#[derive(Default, Clone)]
pub struct CodeSlot(OnceLock<Option<Arc<Compiled>>>);

impl CodeSlot {
    /// The group's compiled form, or `None` when it is not compiled (see
    /// the module docs).
    pub fn get(&self, g: &FusedGroup) -> Option<&Compiled> {
        if !enabled() || INTERPRETED.get() {
            return None;
        }
        self.0
            .get_or_init(|| {
                let prog = record_group(g, recording_level()).ok()?;
                Some(Arc::new(Compiled { prog, kernels: Mutex::new(Vec::new()) }))
            })
            .as_deref()
    }
}

impl std::fmt::Debug for CodeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSlot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::fuse::FusedOp;

    fn group(ops: Vec<(Primitive, Vec<usize>)>, inputs: usize) -> FusedGroup {
        let n = inputs + ops.len();
        FusedGroup {
            inputs: vec![DType::F32; inputs],
            ops: ops.into_iter().map(|(prim, args)| FusedOp { prim, args, dtype: DType::F32 }).collect(),
            outputs: vec![n - 1],
        }
    }

    #[test]
    fn repeated_operations_are_recorded_once() {
        // (x * y) + (x * y): one product.
        let mul = Primitive::Binary(BinaryOp::Mul);
        let g = group(
            vec![(mul.clone(), vec![0, 1]), (mul, vec![0, 1]), (Primitive::Binary(BinaryOp::Add), vec![2, 3])],
            2,
        );
        let p = lower(&g).expect("arithmetic lowers");
        let muls = p.nodes.iter().filter(|n| matches!(n, Node::Bin(Bin::Mul, ..))).count();
        assert_eq!(muls, 1);
        assert_eq!(p.outputs, vec![p.nodes.len() as Val - 1]);
    }

    #[test]
    fn unsupported_ops_and_dtypes_are_not_lowered() {
        let g = group(vec![(Primitive::Unary(UnaryOp::Sin), vec![0]), (Primitive::Unary(UnaryOp::Neg), vec![1])], 1);
        let p = lower(&g).expect("sine lowers, with a call for large lanes");
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Fix(Fix::Big(Func::Sin), ..))));
        let mut g =
            group(vec![(Primitive::Unary(UnaryOp::Neg), vec![0]), (Primitive::Unary(UnaryOp::Abs), vec![1])], 1);
        assert!(lower(&g).is_some());
        g.inputs[0] = DType::F64;
        assert!(lower(&g).is_none());
        let single = group(vec![(Primitive::Unary(UnaryOp::Neg), vec![0])], 1);
        assert!(lower(&single).is_some(), "a single op is compiled too");
    }

    #[test]
    fn ops_of_16_bit_floats_round_unless_exact() {
        // exp(x) rounds to the type; -exp(x) is already one of its values;
        // the output is stored as the type.
        for (d, h) in [(DType::F16, Half::F16), (DType::BF16, Half::Bf16)] {
            let mut g =
                group(vec![(Primitive::Unary(UnaryOp::Exp), vec![0]), (Primitive::Unary(UnaryOp::Neg), vec![1])], 1);
            g.inputs[0] = d;
            for op in &mut g.ops {
                op.dtype = d;
            }
            let p = lower_at(&g, Level::Avx512).expect("16-bit float groups lower for AVX-512");
            assert!(matches!(p.nodes[0], Node::InputHalf(0, k) if k == h));
            let narrows = p.nodes.iter().filter(|n| matches!(n, Node::Un(Un::Narrow(k), _) if *k == h)).count();
            assert_eq!(narrows, 1, "exp rounds, neg does not");
            assert_eq!(p.out_store, vec![Store::Half(h)]);
            let avx2 = lower_at(&g, Level::Avx2).expect("and for AVX2");
            assert_eq!(avx2.out_store, vec![Store::Half(h)]);
        }
    }

    #[test]
    fn f64_groups_record_arithmetic_and_math_f64_functions() {
        // An f64 group is an f64 program: its constants are f64 bits; a
        // function math_f64 does not vectorize or a mix with f32 values
        // makes it decline.
        let f64_group = |ops: Vec<(Primitive, Vec<usize>)>| {
            let mut g = group(ops, 1);
            g.inputs[0] = DType::F64;
            for op in &mut g.ops {
                op.dtype = DType::F64;
            }
            g
        };
        let g = f64_group(vec![(Primitive::Unary(UnaryOp::Abs), vec![0]), (Primitive::Unary(UnaryOp::Rsqrt), vec![1])]);
        let p = lower_at(&g, Level::Avx512).expect("f64 arithmetic lowers");
        assert_eq!(p.elem, Elem::F64);
        assert!(p.nodes.contains(&Node::Const(0x7fff_ffff_ffff_ffff)), "abs masks the f64 sign bit");
        assert!(p.nodes.contains(&Node::Const(1f64.to_bits())), "rsqrt divides 1.0 as an f64");
        assert_eq!(lower_at(&g, Level::Avx2).expect("and for AVX2").elem, Elem::F64);
        for b in [BinaryOp::Atan2, BinaryOp::Pow] {
            let g = f64_group(vec![(Primitive::Binary(b), vec![0, 0])]);
            assert_eq!(lower_at(&g, Level::Avx512).expect("math_f64's, recorded").elem, Elem::F64, "{b:?}");
        }
        // erf is math_f64's, recorded: its pieces selected by lane.
        let p = lower_at(&f64_group(vec![(Primitive::Unary(UnaryOp::Erf), vec![0])]), Level::Avx512)
            .expect("f64 erf lowers");
        assert!(p.nodes.contains(&Node::Const(6f64.to_bits())), "erf clamps at 6");
        // The sine: the vector code and a call for the C library's lanes.
        let p = lower_at(&f64_group(vec![(Primitive::Unary(UnaryOp::Sin), vec![0])]), Level::Avx2).expect("f64 sin");
        assert!(matches!(p.nodes[p.outputs[0] as usize], Node::Fix(Fix::Library(Trig::Sin), ..)));
        // exp is math_f64's, recorded: 2^k built from 64-bit integer bits.
        let p = lower_at(&f64_group(vec![(Primitive::Unary(UnaryOp::Exp), vec![0])]), Level::Avx512)
            .expect("f64 exp lowers");
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Un(Un::Shl(52), _))));
        assert!(!p.nodes.iter().any(|n| matches!(n, Node::Bin(Bin::Scalef, ..) | Node::Un(Un::Rcp14, _))));
        // Floor division and remainder: the vector divmod, and a call of
        // the f64 scalar code for the other lanes.
        for (b, fix) in [(BinaryOp::FloorDivide, Fix::FloorDivide64), (BinaryOp::Remainder, Fix::Remainder64)] {
            let g = f64_group(vec![(Primitive::Binary(b), vec![0, 0])]);
            let p = lower_at(&g, Level::Avx512).expect("f64 divmod lowers");
            assert!(matches!(p.nodes[p.outputs[0] as usize], Node::Fix(f, ..) if f == fix), "{b:?}");
        }
        let mut mixed = f64_group(vec![(Primitive::AsType(DType::F32), vec![0])]);
        mixed.ops[0].dtype = DType::F32;
        assert!(lower_at(&mixed, Level::Avx512).is_none(), "f32 and f64 values do not mix");
        // The failed recording left nothing behind: an f32 group records as before.
        let f32_group = group(vec![(Primitive::Unary(UnaryOp::Exp), vec![0])], 1);
        assert_eq!(lower_at(&f32_group, Level::Avx512).expect("f32 exp lowers").elem, Elem::F32);
    }

    #[test]
    fn i32_values_are_32_bit_lanes_of_f32_programs() {
        // x.astype(i32) * x.astype(i32) as f32: a float-to-int conversion
        // (saturating: two selections after it), an integer product, an
        // int-to-float one. Casts to bfloat16 have no lowering.
        let mut g = group(
            vec![
                (Primitive::AsType(DType::I32), vec![0]),
                (Primitive::Binary(BinaryOp::Mul), vec![1, 1]),
                (Primitive::AsType(DType::F32), vec![2]),
            ],
            1,
        );
        g.ops[0].dtype = DType::I32;
        g.ops[1].dtype = DType::I32;
        let p = lower_at(&g, Level::Avx512).expect("i32 arithmetic lowers");
        assert_eq!(p.elem, Elem::F32);
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Un(Un::FloatToIntTrunc, _))));
        assert_eq!(p.nodes.iter().filter(|n| matches!(n, Node::Blend(..))).count(), 2, "saturation and NaN");
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Bin(Bin::IMul, ..))));
        assert!(matches!(p.nodes[p.outputs[0] as usize], Node::Un(Un::IntToFloat, _)));
        let avx2 = lower_at(&g, Level::Avx2).expect("and for AVX2");
        assert!(avx2.nodes.iter().any(|n| matches!(n, Node::Bin(Bin::IMul, ..))));
        // To bfloat16: through an f32 rounded to odd, then narrowed.
        let mut g = group(vec![(Primitive::AsType(DType::I32), vec![0]), (Primitive::AsType(DType::BF16), vec![1])], 1);
        g.ops[0].dtype = DType::I32;
        g.ops[1].dtype = DType::BF16;
        let p = lower_at(&g, Level::Avx512).expect("i32 to bfloat16 lowers");
        assert!(matches!(p.nodes[p.outputs[0] as usize], Node::Un(Un::Narrow(Half::Bf16), _)));
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Un(Un::Shl(31), _))), "the parity of the f32");
        // Floor division, remainder and pow: a vector path and a call for
        // the lanes it does not cover.
        for (b, fix) in [
            (BinaryOp::FloorDivide, Fix::IntFloorDivide),
            (BinaryOp::Remainder, Fix::IntRemainder),
            (BinaryOp::Pow, Fix::IntPow),
        ] {
            let mut g = group(vec![(Primitive::AsType(DType::I32), vec![0]), (Primitive::Binary(b), vec![1, 1])], 1);
            g.ops[0].dtype = DType::I32;
            g.ops[1].dtype = DType::I32;
            let p = lower_at(&g, Level::Avx512).expect("i32 floor division, remainder and pow lower");
            assert!(matches!(p.nodes[p.outputs[0] as usize], Node::Fix(f, ..) if f == fix), "{b:?}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_broadcast_exponent_compiles_with_its_masks_hoisted() {
        // x^e with e a broadcast scalar: e's five bit masks and the slow
        // lanes' mask are computed before the loop and live through it;
        // the comparisons making `slow` are freed before the loop, which
        // leaves just enough of AVX-512's six mask registers.
        use crate::backend::cpu::{jit_avx2, jit_x86};
        let g = FusedGroup {
            inputs: vec![DType::I32; 2],
            ops: vec![FusedOp { prim: Primitive::Binary(BinaryOp::Pow), args: vec![0, 1], dtype: DType::I32 }],
            outputs: vec![2],
        };
        let mut scalar_e = InputSet::EMPTY;
        scalar_e.insert(1);
        for bcast in [InputSet::EMPTY, scalar_e] {
            let v = Variant { bcast, prefetch: 0 };
            assert!(
                jit_x86::generate(&lower_at(&g, Level::Avx512).expect("lowers"), v).is_some(),
                "AVX-512, {bcast:?}"
            );
            assert!(jit_avx2::generate(&lower_at(&g, Level::Avx2).expect("lowers"), v).is_some(), "AVX2, {bcast:?}");
        }
    }

    #[test]
    fn transcendental_functions_record_the_simd_math_code() {
        let g = group(vec![(Primitive::Unary(UnaryOp::Tanh), vec![0]), (Primitive::Unary(UnaryOp::Neg), vec![1])], 1);
        let p = lower_at(&g, Level::Avx512).expect("tanh lowers");
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Bin(Bin::Scalef, ..))), "tanh goes through exp");
        assert!(p.nodes.iter().any(|n| matches!(n, Node::Un(Un::Rcp14, _))), "and a reciprocal estimate");
        // SSA: operands precede their users.
        for (i, n) in p.nodes.iter().enumerate() {
            assert!(n.operands().iter().all(|&o| (o as usize) < i));
        }
    }

    #[test]
    fn erf_reads_its_coefficients_from_tables() {
        // Seven coefficients, each one lookup of the same index; no blend
        // between two branches' values but the first piece's factor, the
        // saturation at 1 and the NaN lanes.
        let g = group(vec![(Primitive::Unary(UnaryOp::Erf), vec![0])], 1);
        for level in [Level::Avx2, Level::Avx512] {
            let p = lower_at(&g, level).expect("erf lowers");
            let lookups: Vec<(Table, Val)> = p
                .nodes
                .iter()
                .filter_map(|n| if let Node::Un(Un::Lookup(t), i) = *n { Some((t, i)) } else { None })
                .collect();
            assert_eq!(lookups.len(), 7, "{level:?}");
            assert!(lookups.iter().all(|l| l.1 == lookups[0].1), "one index");
            let tables: std::collections::HashSet<Table> = lookups.iter().map(|l| l.0).collect();
            assert_eq!(tables.len(), 7, "seven tables");
            assert_eq!(p.nodes.iter().filter(|n| matches!(n, Node::Blend(..))).count(), 4, "{level:?}");
        }
    }

    #[test]
    fn each_level_records_its_own_operations() {
        // AVX2 has neither vscalefps nor vrcp14ps: its kernels scale by
        // multiplying by 2^n made of shifted bits and refine a 12-bit
        // estimate twice.
        let g = group(vec![(Primitive::Unary(UnaryOp::Tanh), vec![0]), (Primitive::Unary(UnaryOp::Neg), vec![1])], 1);
        let avx2 = lower_at(&g, Level::Avx2).expect("tanh lowers");
        let has = |p: &Prog, f: &dyn Fn(&Node) -> bool| p.nodes.iter().any(f);
        assert!(!has(&avx2, &|n| matches!(n, Node::Bin(Bin::Scalef, ..) | Node::Un(Un::Rcp14, _))));
        assert!(has(&avx2, &|n| matches!(n, Node::Un(Un::Rcp12, _))));
        assert!(has(&avx2, &|n| matches!(n, Node::Un(Un::Shl(23), _))));
        let avx512 = lower_at(&g, Level::Avx512).expect("tanh lowers");
        assert!(!has(&avx512, &|n| matches!(n, Node::Un(Un::Rcp12, _))));
        assert!(avx2.nodes.len() > avx512.nodes.len(), "more operations without the AVX-512 instructions");
    }
}
