//! CUDA C for kiln's dtypes and elementwise operations: the storage and
//! register types of each dtype, loads and stores, and the expression of
//! each primitive, written once for every dtype with the CPU kernels'
//! semantics (`backend::cpu::math`, `cast`): integers wrap, division by
//! zero gives 0, float-to-integer conversion saturates (NaN gives 0),
//! `f16`/`bf16` values compute in `f32` and round once per operation, the
//! `f32` transcendentals are the CPU's own approximations printed by
//! [`cmath`], and the rest go through `f64` math. No CUDA
//! header is included: the prelude writes out what the kernels need.

use std::fmt::Write;

use crate::backend::cuda::cmath;
use crate::backend::simd_math::Func;
use crate::buffer::Buffer;
use crate::dtype::DType;
use crate::passes::fuse::FusedGroup;
use crate::primitive::{BinaryOp, Primitive, UnaryOp};

/// Definitions every generated kernel starts with.
pub const PRELUDE: &str = r#"typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;
__device__ __forceinline__ float h2f(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float b2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 f2b(float f) { u16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float rh(float f) { return h2f(f2h(f)); }
__device__ __forceinline__ float rb(float f) { return b2f(f2b(f)); }
/* f64 -> f32 rounded to odd: a later rounding to f16/bf16 is then the single rounding of the f64. */
__device__ __forceinline__ float odd(double d) {
    float f = __double2float_rz(d);
    if (f == f && (double)f != d) f = __uint_as_float(__float_as_uint(f) | 1u);
    return f;
}
__device__ __forceinline__ u8 d2u8(double x) { return x != x ? 0 : x <= 0.0 ? 0 : x >= 255.0 ? 255 : (u8)x; }
__device__ __forceinline__ u32 d2u32(double x) { return x != x ? 0u : x <= 0.0 ? 0u : x >= 4294967295.0 ? 4294967295u : (u32)x; }
__device__ __forceinline__ int d2i32(double x) { return x != x ? 0 : x <= -2147483648.0 ? (-2147483647 - 1) : x >= 2147483647.0 ? 2147483647 : (int)x; }
__device__ __forceinline__ i64 d2i64(double x) { return x != x ? 0 : x <= -9223372036854775808.0 ? (-9223372036854775807ll - 1) : x >= 9223372036854775807.0 ? 9223372036854775807ll : (i64)x; }
template <typename T> __device__ __forceinline__ void fdivmod(T a, T b, T* q, T* r) {
    T m = fmod(a, b);
    if (b == (T)0) { *q = a / b; *r = m; return; }
    T div = (a - m) / b;
    if (m != (T)0) {
        if ((b < (T)0) != (m < (T)0)) { m += b; div -= (T)1; }
    } else {
        m = copysign((T)0, b);
    }
    T qq;
    if (div != (T)0) { T fl = floor(div); qq = (div - fl > (T)0.5) ? fl + (T)1 : fl; }
    else { qq = copysign((T)0, a / b); }
    *q = qq; *r = m;
}
template <typename T> __device__ __forceinline__ T ffloordiv(T a, T b) { T q, r; fdivmod(a, b, &q, &r); return q; }
template <typename T> __device__ __forceinline__ T frem(T a, T b) { T q, r; fdivmod(a, b, &q, &r); return r; }
template <typename T, typename U> __device__ __forceinline__ T sfloordiv(T a, T b) {
    if (b == 0) return 0;
    if (b == (T)-1) return (T)((U)0 - (U)a);
    T q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
template <typename T> __device__ __forceinline__ T srem(T a, T b) {
    if (b == 0 || b == (T)-1) return 0;
    T r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
template <typename T, typename U> __device__ __forceinline__ T spow(T b, T e) {
    if (e < 0) return b == 1 ? 1 : b == (T)-1 ? ((e % 2 == 0) ? 1 : (T)-1) : 0;
    U base = (U)b, acc = 1;
    while (e > 0) { if (e & 1) acc *= base; base *= base; e >>= 1; }
    return (T)acc;
}
template <typename T> __device__ __forceinline__ T upow(T b, T e) {
    u32 n = (u32)e;
    u64 base = b, acc = 1;
    while (n > 0) { if (n & 1u) acc = (T)(acc * base); base = (T)(base * base); n >>= 1; }
    return (T)acc;
}
"#;

/// The 4-element vector type of the kernels' 128-bit (for `f32`) accesses;
/// a kernel that uses it adds it after [`PRELUDE`].
pub const V4: &str = "template <typename T> struct alignas(4 * sizeof(T)) V4 { T v[4]; };\n";

/// How a dtype's elements are stored in device memory.
pub fn storage_type(dt: DType) -> &'static str {
    match dt {
        DType::Bool | DType::U8 => "u8",
        DType::U32 => "u32",
        DType::I32 => "int",
        DType::I64 => "i64",
        DType::F16 | DType::BF16 => "u16",
        DType::F32 => "float",
        DType::F64 => "double",
    }
}

/// The C type a value of `dt` is held in inside a kernel (`f16`/`bf16` as
/// `float`, always holding a value of the dtype).
pub fn register_type(dt: DType) -> &'static str {
    match dt {
        DType::Bool => "bool",
        DType::F16 | DType::BF16 => "float",
        d => storage_type(d),
    }
}

/// The unsigned C type arithmetic of an integer dtype wraps in.
fn unsigned_of(dt: DType) -> &'static str {
    match dt {
        DType::I64 => "u64",
        _ => "u32",
    }
}

/// The register value of stored element `e` (an lvalue expression).
pub fn load(dt: DType, e: &str) -> String {
    match dt {
        DType::Bool => format!("({e} != 0)"),
        DType::F16 => format!("h2f({e})"),
        DType::BF16 => format!("b2f({e})"),
        _ => e.to_string(),
    }
}

/// The stored form of register value `v`.
pub fn store(dt: DType, v: &str) -> String {
    match dt {
        DType::Bool => format!("(u8)({v})"),
        DType::F16 => format!("f2h({v})"),
        DType::BF16 => format!("f2b({v})"),
        _ => v.to_string(),
    }
}

/// A value of `dt` computed in `f32` (or `f64`), rounded to `dt`.
fn round_to(dt: DType, e: String) -> String {
    match dt {
        DType::F16 => format!("rh({e})"),
        DType::BF16 => format!("rb({e})"),
        _ => e,
    }
}

/// A literal of the float compute type of `dt` (`double` for f64).
pub fn float_lit(dt: DType, v: f64) -> String {
    if dt == DType::F64 {
        format!("__longlong_as_double(0x{:016x}ll)", v.to_bits())
    } else {
        cmath::lit(v as f32)
    }
}

/// The register value of `b`'s first element as a C literal (with its
/// exact bits), or `None` when `b` is empty. Kernels inline a program's
/// one-element constants this way instead of reading them.
pub fn literal(b: &Buffer) -> Option<String> {
    Some(match b {
        Buffer::Bool(v) => (*v.first()?).to_string(),
        Buffer::U8(v) => format!("(u8){}", v.first()?),
        Buffer::U32(v) => format!("{}u", v.first()?),
        Buffer::I32(v) => format!("(int)0x{:x}u", *v.first()? as u32),
        Buffer::I64(v) => format!("(i64)0x{:x}ull", *v.first()? as u64),
        Buffer::F16(v) => float_lit(DType::F32, v.first()?.to_f64()),
        Buffer::BF16(v) => float_lit(DType::F32, v.first()?.to_f64()),
        Buffer::F32(v) => float_lit(DType::F32, *v.first()? as f64),
        Buffer::F64(v) => float_lit(DType::F64, *v.first()?),
    })
}

/// The C literal of operand `k` in `lits`, if it has one (a constant
/// inlined rather than read).
pub fn lit_of<'a>(lits: &[Option<&'a str>], k: usize) -> Option<&'a str> {
    lits.get(k).copied().flatten()
}

/// The statements of `g`'s ops on registers `{pre}0..` (its inputs already
/// declared), declaring one register per op.
pub fn ops_code(s: &mut String, g: &FusedGroup, pre: &str, next: &mut usize) {
    let n = g.inputs.len();
    for (j, op) in g.ops.iter().enumerate() {
        let args: Vec<String> = op.args.iter().map(|&r| format!("{pre}{r}")).collect();
        let dts: Vec<DType> = op.args.iter().map(|&r| g.reg_dtype(r)).collect();
        let (stmts, e) =
            self::op(&op.prim, &args, &dts, op.dtype, next).expect("fused groups hold elementwise ops only");
        s.push_str(&stmts);
        line(s, format!("{} {pre}{} = {e};", register_type(op.dtype), n + j));
    }
}

/// Converts register value `x` of `from` to a register value of `to`
/// (`as` semantics, see the module docs).
pub fn cast(x: &str, from: DType, to: DType) -> String {
    if from == to {
        return x.to_string();
    }
    if to == DType::Bool {
        return format!("({x} != 0)");
    }
    let from_int = !from.is_float();
    if to.is_float() {
        return match (from_int, from, to) {
            (true, _, DType::F32) => format!("(float)(i64)({x})"),
            (true, _, DType::F64) => format!("(double)(i64)({x})"),
            (true, _, _) => round_to(to, format!("odd((double)(i64)({x}))")),
            (false, DType::F64, DType::F32) => format!("(float)({x})"),
            (false, DType::F64, _) => round_to(to, format!("odd({x})")),
            (false, _, DType::F64) => format!("(double)({x})"),
            (false, _, DType::F32) => x.to_string(),
            (false, _, _) => round_to(to, x.to_string()),
        };
    }
    if from_int {
        return format!("({})(i64)({x})", storage_type(to));
    }
    let f = match to {
        DType::U8 => "d2u8",
        DType::U32 => "d2u32",
        DType::I32 => "d2i32",
        _ => "d2i64",
    };
    format!("{f}((double)({x}))")
}

/// Statements (possibly none) and the expression of one elementwise
/// primitive on register values `a` of dtypes `dts`, with result dtype
/// `out`; `next` numbers the temporaries of printed math. `None` for a
/// primitive that is not elementwise.
pub fn op(prim: &Primitive, a: &[String], dts: &[DType], out: DType, next: &mut usize) -> Option<(String, String)> {
    let none = String::new();
    Some(match prim {
        Primitive::AsType(to) => (none, cast(&a[0], dts[0], *to)),
        Primitive::Where => (none, format!("({} ? {} : {})", a[0], a[1], a[2])),
        Primitive::Unary(u) => unary(*u, &a[0], dts[0], out, next),
        Primitive::Binary(b) => (none, binary(*b, &a[0], &a[1], dts[0])),
        _ => return None,
    })
}

fn unary(u: UnaryOp, x: &str, dt: DType, out: DType, next: &mut usize) -> (String, String) {
    use UnaryOp::*;
    let plain = |e: String| (String::new(), e);
    if dt == DType::Bool {
        return plain(match u {
            LogicalNot => format!("(!{x})"),
            IsNan | IsInf => "false".into(),
            IsFinite => "true".into(),
            _ => unreachable!("numeric ops on bool are rejected by UnaryOp::out_dtype"),
        });
    }
    if !dt.is_float() {
        let t = storage_type(dt);
        let un = unsigned_of(dt);
        let signed = matches!(dt, DType::I32 | DType::I64);
        return plain(match u {
            Neg => format!("(({t})(({un})0 - ({un})({x})))"),
            Abs if signed => format!("(({x}) < 0 ? ({t})(({un})0 - ({un})({x})) : ({x}))"),
            Abs => x.to_string(),
            Sign if signed => format!("(({t})((({x}) > 0) - (({x}) < 0)))"),
            Sign => format!("(({t})(({x}) > 0))"),
            Square => format!("(({t})(({un})({x}) * ({un})({x})))"),
            Floor | Ceil | Round => x.to_string(),
            LogicalNot => format!("(({x}) == 0)"),
            IsNan | IsInf => "false".into(),
            IsFinite => "true".into(),
            _ => unreachable!("float-only ops are rejected by UnaryOp::out_dtype"),
        });
    }
    let d = dt == DType::F64;
    // Float ops: f64 in double, the others in float (rounded to f16/bf16).
    let (sfx, one, zero, inf) = if d {
        ("", "1.0", "0.0", "__longlong_as_double(0x7ff0000000000000ll)")
    } else {
        ("f", "1.0f", "0.0f", "__uint_as_float(0x7f800000u)")
    };
    let r = |e: String| (String::new(), round_to(out, e));
    match u {
        Neg => r(format!("(-({x}))")),
        Abs => r(format!("fabs{sfx}({x})")),
        Sign => r(format!("(({x}) > {zero} ? {one} : ({x}) < {zero} ? -{one} : ({x}))")),
        Sqrt => r(format!("sqrt{sfx}({x})")),
        Rsqrt => r(format!("({one} / sqrt{sfx}({x}))")),
        Square => r(format!("(({x}) * ({x}))")),
        Reciprocal => r(format!("({one} / ({x}))")),
        Floor => r(format!("floor{sfx}({x})")),
        Ceil => r(format!("ceil{sfx}({x})")),
        Round => r(format!("rint{sfx}({x})")),
        LogicalNot => (String::new(), format!("(({x}) == {zero})")),
        IsNan => (String::new(), format!("(({x}) != ({x}))")),
        IsInf => (String::new(), format!("(fabs{sfx}({x}) == {inf})")),
        IsFinite => (String::new(), format!("(fabs{sfx}({x}) < {inf})")),
        _ => {
            let func = Func::of(u).expect("the remaining float ops are simd_math's");
            if d {
                let e = match u {
                    Sigmoid => format!("(({x}) >= 0.0 ? 1.0 / (1.0 + exp(-({x}))) : exp({x}) / (1.0 + exp({x})))"),
                    // C's double functions are named as the ops are.
                    _ => format!("{}({x})", u.name()),
                };
                r(e)
            } else {
                let (stmts, v) = cmath::call(func, x, next);
                (stmts, round_to(out, v))
            }
        }
    }
}

fn binary(b: BinaryOp, x: &str, y: &str, dt: DType) -> String {
    use BinaryOp::*;
    let pred = |op: &str| format!("(({x}) {op} ({y}))");
    let truth = |v: &str| format!("(({v}) != 0)");
    match b {
        Equal => return pred("=="),
        NotEqual => return pred("!="),
        Less => return pred("<"),
        LessEqual => return pred("<="),
        Greater => return pred(">"),
        GreaterEqual => return pred(">="),
        LogicalAnd => return format!("({} && {})", truth(x), truth(y)),
        LogicalOr => return format!("({} || {})", truth(x), truth(y)),
        _ => {}
    }
    if dt == DType::Bool {
        return match b {
            Add | Maximum => format!("(({x}) || ({y}))"),
            Mul | Minimum => format!("(({x}) && ({y}))"),
            _ => unreachable!("arithmetic on bools other than add/mul/max/min is rejected"),
        };
    }
    if !dt.is_float() {
        let t = storage_type(dt);
        let un = unsigned_of(dt);
        let signed = matches!(dt, DType::I32 | DType::I64);
        return match b {
            Add => format!("(({t})(({un})({x}) + ({un})({y})))"),
            Sub => format!("(({t})(({un})({x}) - ({un})({y})))"),
            Mul => format!("(({t})(({un})({x}) * ({un})({y})))"),
            FloorDivide if signed => format!("sfloordiv<{t}, {un}>({x}, {y})"),
            FloorDivide => format!("(({y}) == 0 ? ({t})0 : ({t})(({x}) / ({y})))"),
            Remainder if signed => format!("srem<{t}>({x}, {y})"),
            Remainder => format!("(({y}) == 0 ? ({t})0 : ({t})(({x}) % ({y})))"),
            Pow if signed => format!("spow<{t}, {un}>({x}, {y})"),
            Pow => format!("upow<{t}>({x}, {y})"),
            Maximum => format!("(({x}) > ({y}) ? ({x}) : ({y}))"),
            Minimum => format!("(({x}) < ({y}) ? ({x}) : ({y}))"),
            _ => unreachable!("integer operands of {b:?} are cast to float first"),
        };
    }
    let d = dt == DType::F64;
    let ct = if d { "double" } else { "float" };
    let e = match b {
        Add => pred("+"),
        Sub => pred("-"),
        Mul => pred("*"),
        Div => pred("/"),
        FloorDivide => format!("ffloordiv<{ct}>({x}, {y})"),
        Remainder => format!("frem<{ct}>({x}, {y})"),
        Pow | Atan2 => {
            let f = if b == Pow { "pow" } else { "atan2" };
            if d {
                format!("{f}({x}, {y})")
            } else {
                format!("(float){f}((double)({x}), (double)({y}))")
            }
        }
        Maximum => format!(
            "((({x}) != ({x}) || ({x}) > ({y})) ? ({x}) : ({y}) > ({x}) ? ({y}) : ({x}) == ({y}) ? ({x}) : ({y}))"
        ),
        Minimum => format!(
            "((({x}) != ({x}) || ({x}) < ({y})) ? ({x}) : ({y}) < ({x}) ? ({y}) : ({x}) == ({y}) ? ({x}) : ({y}))"
        ),
        _ => unreachable!("predicates are handled above"),
    };
    round_to(dt, e)
}

/// Appends `text` as one indented line to `s`.
pub fn line(s: &mut String, text: impl std::fmt::Display) {
    let _ = writeln!(s, "    {text}");
}

/// Position decomposition: statements setting `{v}` to the offset of
/// linear index `{i}` over dims `{p}d*` with strides `{p}s*`.
pub fn offset_code(s: &mut String, v: &str, i: &str, p: &str, rank: usize) {
    line(s, format!("ix {v} = 0;"));
    if rank == 0 {
        return;
    }
    line(s, format!("{{ ix rest = {i};"));
    for d in (0..rank).rev() {
        if d == 0 {
            line(s, format!("{v} += rest * (ix){p}s0;"));
        } else {
            line(s, format!("{v} += (rest % (ix){p}d{d}) * (ix){p}s{d}; rest /= (ix){p}d{d};"));
        }
    }
    line(s, "}");
}
