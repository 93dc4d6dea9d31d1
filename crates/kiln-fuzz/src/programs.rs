//! Random programs compiled against eager (fuzz target (b), and the
//! machinery of the differential test, `tests/differential.rs` of this crate): a program is a list of
//! [`Step`]s over random inputs (over 40 op kinds: elementwise, broadcasting,
//! reductions, matmul, shape ops, several outputs); it must give the same
//! results compiled as eagerly, in normal and shapeless mode, including
//! calls on offset views of the same shapes and with new shapes. About
//! one case in 32 runs over rows large enough for the paths small arrays
//! never take (row-blocked chains, row kernels, work split over threads):
//! see [`case`].
//!
//! Tolerance: integer and bool results must be equal. Float results may
//! differ by 1e-5 relative to the larger magnitude (about 80 ulp of f32) plus
//! 1e-6 absolute: fused reductions sum in a different order than eager ones
//! (a few ulp), and a following `exp` or `logsumexp` scales that difference
//! up; elementwise-only programs agree to within a few ulp. NaN must match
//! NaN. Programs that read or make 16-bit floats get the wider tolerance of
//! [`Tol::of`].

use kiln::{compile_with, Array, Axes, CompileOptions, DType, Device, Result};

use crate::bytes::Bytes;

/// One step of a random program.
#[derive(Clone, Debug)]
pub struct Step {
    /// Which op (modulo [`N_OPS`]).
    pub op: u8,
    /// The first operand (an index into the values so far).
    pub a: u8,
    /// The second operand.
    pub b: u8,
    /// The third operand.
    pub c: u8,
    /// A parameter (an axis, a flag).
    pub p: u8,
}

/// The number of op kinds.
pub const N_OPS: u8 = 54;

pub fn pick(vals: &[Array], i: u8) -> &Array {
    &vals[i as usize % vals.len()]
}

/// Applies one step; `Ok(None)` or `Err` when the op does not apply to these operands
/// (a dtype or shape error at build time is a skip, decided by shapes and
/// dtypes only, so tracing and eager runs decide alike).
pub fn apply(s: &Step, vals: &[Array], n_inputs: usize) -> Result<Option<Array>> {
    let (x, y, z) = (pick(vals, s.a), pick(vals, s.b), pick(vals, s.c));
    // Discontinuous ops (floor, comparisons, remainder, argmax) turn an ulp of
    // difference into a different result, so they read only the arguments,
    // which are bit-identical in both runs.
    let (rx, ry) = (pick(&vals[..n_inputs], s.a), pick(&vals[..n_inputs], s.b));
    let axis = |x: &Array| -> isize {
        if x.ndim() == 0 {
            0
        } else {
            (s.p as usize % x.ndim()) as isize
        }
    };
    let axes = |x: &Array| if s.p % 5 == 4 { Axes::All } else { Axes::from(axis(x)) };
    let float = x.dtype().is_float();
    let r = match s.op % N_OPS {
        0 => x.neg(),
        1 => x.abs(),
        // exp's relative error is its argument's absolute error, an ulp of
        // which grows with the argument: bounded, so that summing in
        // another order stays within the tolerance.
        2 if float => x.minimum(8.0f32)?.exp(),
        3 if float => x.abs()?.log1p(),
        // sin's absolute error is its argument's, which is large for a
        // large argument: bounded like exp's.
        4 if float => x.minimum(8.0f32)?.maximum(-8.0f32)?.sin(),
        5 if float => x.tanh(),
        6 if float => x.sigmoid(),
        // sqrt is not Lipschitz at 0 (an ulp of difference near zero becomes
        // a difference of its square root): it reads only the arguments.
        7 if rx.dtype().is_float() => rx.abs()?.sqrt(),
        8 => x.square(),
        9 => rx.floor(),
        10 => x + y,
        11 => x - y,
        12 => x * y,
        // Division by a computed value near zero turns an ulp into an
        // infinity or a NaN: the divisor is an argument, and never zero
        // (zeros become ones), because a computed numerator that is zero in
        // one run and an ulp away in the other gives NaN against an
        // infinity. Division by zero itself is the ops target's business.
        13 => x / (ry + ry.equal(0)?.astype(ry.dtype())?)?,
        14 => x.maximum(y),
        15 => x.minimum(y),
        16 => kiln::where_(&rx.less(ry)?, y, z),
        // A float cast to an integer truncates, so an ulp of difference can
        // change it by one: the integer cast reads only the arguments.
        17 if s.p % 3 == 2 => rx.astype(DType::I32),
        17 => x.astype([DType::F32, DType::F64][s.p as usize % 3]),
        // Every fifth reduction is over all axes (a loss, a norm).
        18 if x.ndim() > 0 => x.sum(axes(x), s.p.is_multiple_of(2)),
        19 if x.ndim() > 0 => x.max(axes(x), s.p % 2 == 1),
        20 if x.ndim() > 0 => x.mean(axes(x), s.p.is_multiple_of(2)),
        21 if rx.ndim() > 0 => rx.argmax(Some(axis(rx)), false)?.astype(DType::I32),
        22 if x.ndim() >= 1 && y.ndim() >= 1 => x.matmul(y),
        23 => x.t(),
        24 => x.reshape(&[-1]),
        25 if x.ndim() > 0 => kiln::slice_axis(x, axis(x), Some(1), None, if s.p.is_multiple_of(2) { 1 } else { -1 }),
        // Shape ops that keep axes or counts, not sizes, so that shapeless
        // calls can follow them (a shape read here in Rust would be frozen).
        26 => Ok(kiln::broadcast_arrays(&[x.clone(), y.clone()])?.swap_remove(s.p as usize % 2)),
        38 => kiln::expand_dims(x, &[if s.p.is_multiple_of(2) { 0 } else { -1 }]),
        39 if x.ndim() > 0 => kiln::squeeze(x, Some(&[axis(x)])),
        40 if x.ndim() > 0 => Ok(kiln::split(x, 2, axis(x))?.swap_remove(s.p as usize % 2)),
        41 => kiln::stack(&[x.clone(), y.clone()], 0),
        27 if x.ndim() > 0 => kiln::concatenate(&[x.clone(), y.clone()], axis(x)),
        // Softmax's outputs carry its arguments' absolute errors as
        // relative ones (an ulp of 2981 = exp(8) is 2.4e-4): bounded like exp's.
        28 if x.ndim() > 0 && float => x.minimum(8.0f32)?.maximum(-8.0f32)?.softmax(axis(x)),
        29 if x.ndim() > 0 && float => x.logsumexp(axis(x), false),
        30 => rx.remainder(ry),
        31 => rx.equal(ry)?.astype(DType::I32),
        32 => x + 1.5f32,
        33 => (x * 2)? - 3,
        34 if x.ndim() > 0 => x.var(axis(x), s.p.is_multiple_of(2), s.p as usize % 2),
        35 if x.ndim() > 0 => {
            // Layernorm's variance as users write it (rewritten to one pass).
            let d = (x - &x.mean(axis(x), true)?)?;
            (&d * &d)?.mean(axis(x), s.p % 2 == 1)
        }
        37 if rx.ndim() > 0 && rx.dtype().is_float() => {
            // Layernorm without the affine part. Dividing by a small standard
            // deviation magnifies an ulp of difference in its input (a
            // near-constant row), so it reads only the arguments.
            let ax = axis(rx);
            let d = (rx - &rx.mean(ax, true)?)?;
            &d * (d.square()?.mean(ax, true)? + 1e-5)?.rsqrt()?
        }
        36 if x.ndim() > 0 && float => {
            // The softmax denominator as users write it (bounded as 28).
            let x = x.minimum(8.0f32)?.maximum(-8.0f32)?;
            (&x - &x.max(axis(&x), true)?)?.exp()?.sum(axis(&x), s.p.is_multiple_of(2))
        }
        // Bool values inside a group (compiled as lane masks): logical ops,
        // the NaN and infinity tests, a float's truth, all on arguments.
        42 => {
            let keep = kiln::logical_and(&rx.greater_equal(ry)?, &kiln::logical_not(&kiln::isnan(rx)?)?)?;
            kiln::where_(&kiln::logical_or(&keep, &kiln::isinf(ry)?)?, y, z)
        }
        43 => kiln::where_(rx, y, &(z * rx.less_equal(ry)?.astype(z.dtype())?)?),
        44 => x * kiln::logical_or(&rx.not_equal(ry)?, &kiln::isfinite(rx)?)?.astype(x.dtype())?,
        // A bool value that later steps read (and programs return): bool
        // inputs and outputs of compiled groups.
        45 => kiln::logical_or(&rx.greater(ry)?, &kiln::isnan(rx)?),
        // Cosine of arguments beyond the vector reduction's range (up to
        // 1.5e5; generated code calls out for those lanes), on arguments.
        46 if rx.dtype().is_float() => (rx * 30_000.0f32)?.cos(),
        47 if rx.dtype().is_float() => rx.abs()?.log2(),
        // tan's relative error is its argument's times x (1 + tan^2) / tan,
        // at most 8 on [-1.4, 1.4].
        48 if float => x.minimum(1.4f32)?.maximum(-1.4f32)?.tan(),
        49 if rx.dtype().is_float() => (rx.abs()? + 1.0f32)?.log10(),
        // pow on arguments (it magnifies a difference in either operand):
        // NaN for negative bases and fractional exponents, infinities at 0.
        50 => rx.pow(ry),
        51 if rx.dtype().is_float() => rx.atan2(ry),
        // Rounding to a 16-bit float (later steps compute in it: each op
        // in f32, rounded to the type).
        52 => x.astype([DType::F16, DType::BF16][s.p as usize % 2]),
        // To u8 (saturating from a float, wrapping from an integer; later
        // steps compute in it, wrapping): on arguments, as op 17.
        53 => rx.astype(DType::U8),
        _ => return Ok(None),
    };
    r.map(Some)
}

/// Indices in `vals` (of length `n`, the first `n_inputs` the arguments)
/// of the values step `s` reads.
pub fn reads(s: &Step, n: usize, n_inputs: usize) -> Vec<usize> {
    let (x, y, z) = (s.a as usize % n, s.b as usize % n, s.c as usize % n);
    let (rx, ry) = (s.a as usize % n_inputs, s.b as usize % n_inputs);
    match s.op % N_OPS {
        7 | 9 | 21 | 37 | 46 | 47 | 49 | 53 => vec![rx],
        17 if s.p % 3 == 2 => vec![rx],
        13 => vec![x, ry],
        10..=15 | 22 | 26 | 27 | 41 => vec![x, y],
        16 | 42 | 43 => vec![rx, ry, y, z],
        44 => vec![x, rx, ry],
        30 | 31 | 45 | 50 | 51 => vec![rx, ry],
        _ => vec![x],
    }
}

/// Replays the recorded steps eagerly on new inputs, as the oracle of a
/// shapeless call: a step that fails (its shapes no longer fit) poisons its
/// value and every value computed from it, and the result is that error
/// only when an output is poisoned (the compiled program drops dead steps).
pub fn replay_eager(steps: &[Step], inputs: &[Array], decisions: &[bool]) -> Result<Vec<Array>> {
    let mut vals: Vec<Array> = inputs.to_vec();
    let mut bad: Vec<Option<kiln::Error>> = vec![None; inputs.len()];
    for (k, s) in steps.iter().enumerate() {
        if !decisions[k] {
            continue;
        }
        let poison = reads(s, vals.len(), inputs.len()).into_iter().find_map(|i| bad[i].clone());
        let out = match poison {
            Some(e) => Err(e),
            None => match apply(s, &vals, inputs.len()) {
                Ok(Some(a)) => Ok(a),
                Ok(None) => Err(kiln::Error::Invalid { op: "replay", msg: "step no longer applies".into() }),
                Err(e) => Err(e),
            },
        };
        match out {
            Ok(a) => {
                vals.push(a);
                bad.push(None);
            }
            Err(e) => {
                vals.push(vals[0].clone());
                bad.push(Some(e));
            }
        }
    }
    let n = vals.len();
    let mut outs = vec![n - 1];
    if n > inputs.len() + 1 {
        outs.push(inputs.len() + (n - inputs.len()) / 2);
    }
    if let Some(e) = outs.iter().find_map(|&i| bad[i].clone()) {
        return Err(e);
    }
    Ok(outs.into_iter().map(|i| vals[i].clone()).collect())
}

/// Runs the recipe; records which steps applied when `decisions` is empty,
/// replays them otherwise.
pub fn run(steps: &[Step], inputs: &[Array], decisions: &mut Vec<bool>, replay: bool) -> Result<Vec<Array>> {
    let mut vals: Vec<Array> = inputs.to_vec();
    for (k, s) in steps.iter().enumerate() {
        let out = apply(s, &vals, inputs.len());
        // KILN_FUZZ_TRACE=1 prints each step that applies (to read a case).
        if std::env::var("KILN_FUZZ_TRACE").is_ok() {
            if let Ok(Some(a)) = &out {
                let r = reads(s, vals.len(), inputs.len());
                eprintln!(
                    "v{} = op {} (p {}) of {:?} -> {:?} {:?}",
                    vals.len(),
                    s.op % N_OPS,
                    s.p,
                    r,
                    a.shape(),
                    a.dtype()
                );
            }
        }
        match (replay, out) {
            (false, Ok(Some(a))) if a.size() <= 4096 => {
                decisions.push(true);
                vals.push(a);
            }
            (false, _) => decisions.push(false),
            (true, Ok(Some(a))) if decisions[k] => vals.push(a),
            (true, Err(e)) if decisions[k] => return Err(e),
            (true, Ok(None)) if decisions[k] => {
                return Err(kiln::Error::Invalid { op: "replay", msg: "step no longer applies".into() })
            }
            (true, _) => {}
        }
    }
    let n = vals.len();
    let mut outs = vec![vals[n - 1].clone()];
    if n > inputs.len() + 1 {
        outs.push(vals[inputs.len() + (n - inputs.len()) / 2].clone());
    }
    Ok(outs)
}

pub fn make_input(shape: &[usize], dtype: DType, seed: u64) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 100.0 - 5.0).round_ties_even() / 2.0)
        .collect();
    Array::from_slice(&v, shape).unwrap().astype(dtype).unwrap()
}

/// One input per `(shape, dtype)`, the k-th from seed `seed + k`.
pub fn make_inputs(inputs: &[(Vec<usize>, DType)], seed: u64) -> Vec<Array> {
    inputs.iter().enumerate().map(|(i, (s, d))| make_input(s, *d, seed + i as u64)).collect()
}

/// Inputs of these shapes that are views: each (of rank 1 or more) is the
/// last rows of an input one row longer, so its data starts past its
/// buffer's start.
pub fn offset_views(inputs: &[(Vec<usize>, DType)], seed: u64) -> Vec<Array> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, (s, d))| {
            let Some((&rows, rest)) = s.split_first() else { return make_input(s, *d, seed + i as u64) };
            let longer: Vec<usize> = [rows + 1].iter().chain(rest).copied().collect();
            let x = kiln::slice_axis(&make_input(&longer, *d, seed + i as u64), 0, Some(1), None, 1).expect("a slice");
            x.eval().expect("a view");
            x
        })
        .collect()
}

/// How far a compiled result may be from the eager one: `rel` relative to
/// the larger magnitude plus `abs` absolute (see [`assert_close_tol`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Relative to the larger of the two magnitudes.
    pub rel: f64,
    /// Absolute, scaled by the largest finite magnitude of the eager
    /// result when that is above 1.
    pub abs: f64,
}

impl Tol {
    /// Programs of `f32` and `f64` values (see the module docs).
    pub const F32: Tol = Tol { rel: 1e-5, abs: 1e-6 };

    /// The tolerance of a program over `inputs` whose applied steps
    /// (`decisions`, as [`run`] records them) may read or make 16-bit
    /// floats. Elementwise ops of those types agree bit for bit, compiled
    /// and eager (each computes in `f32` and rounds); a reduction's `f32`
    /// result, an ulp apart in another order (or through another
    /// algorithm: a variance written out is computed in one pass), rounds
    /// to a value one ulp of the 16-bit type apart when it lies near a
    /// rounding boundary (2^-10 relative for `float16`, 2^-7 for
    /// `bfloat16`), and bounded `exp`s downstream scale an argument's ulp
    /// at 8 up to 8 ulps: 2^-6 for `float16` programs, 2^-3 for `bfloat16`
    /// ones. Such programs are checked for wrong values (a lost broadcast,
    /// a misread layout, garbage), the bits of their elementwise ops by the
    /// kernel tests (`tests/jit.rs`).
    pub fn of(inputs: &[(Vec<usize>, DType)], steps: &[Step], decisions: &[bool]) -> Tol {
        let made = |half: u8| steps.iter().zip(decisions).any(|(s, &d)| d && s.op % N_OPS == 52 && s.p % 2 == half);
        let reads = |d: DType| inputs.iter().any(|(_, t)| *t == d);
        if reads(DType::BF16) || made(1) {
            Tol { rel: 0.125, abs: 0.125 }
        } else if reads(DType::F16) || made(0) {
            Tol { rel: 1.0 / 64.0, abs: 1.0 / 64.0 }
        } else {
            Tol::F32
        }
    }
}

/// [`assert_close_tol`] with [`Tol::F32`].
pub fn assert_close(got: &Array, want: &Array, what: &str) {
    assert_close_tol(got, want, what, Tol::F32)
}

/// [`assert_close_tol`] with [`Tol::F32`]'s relative part and `abs`.
pub fn assert_close_abs(got: &Array, want: &Array, what: &str, abs: f64) {
    assert_close_tol(got, want, what, Tol { abs, ..Tol::F32 })
}

/// Floats within `tol.rel` relative plus `tol.abs` absolute, the absolute
/// part scaled by the largest magnitude in `want` when that is above 1 (a
/// sum that cancels to near zero is off by an ulp of its terms, not of its
/// result, when added in another order); integers exactly.
pub fn assert_close_tol(got: &Array, want: &Array, what: &str, tol: Tol) {
    let Tol { rel, abs } = tol;
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.astype(DType::F64).unwrap(), want.astype(DType::F64).unwrap());
    let (g, w) = (g.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
    let scale = w.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, v| m.max(v.abs()));
    let abs = abs * scale;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if want.dtype().is_float() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rel * a.abs().max(b.abs()) + abs;
            assert!(ok, "{what}: element {i}: compiled {a} vs eager {b}");
        } else {
            assert_eq!(a, b, "{what}: element {i}");
        }
    }
}

/// New shapes for a shapeless call (ranks and dtypes kept): every leading
/// dimension 4 grown by `grow` (a batch axis); every size `v` (up to 4)
/// mapped to `remap[v]` in all inputs at once (sizes that broadcast
/// together still do, unless one becomes 1); and one input's axis flipped
/// between 1 and the largest size on that axis among the inputs, so that
/// another operand broadcasts (or none can). Empty axes stay empty: ops
/// such as `softmax` branch on that in Rust, at trace time.
pub fn new_shapes(
    inputs: &[(Vec<usize>, DType)],
    grow: usize,
    remap: &[usize],
    flip: (u8, u8),
) -> Vec<Vec<(Vec<usize>, DType)>> {
    let grown = inputs
        .iter()
        .map(|(s, d)| (s.iter().enumerate().map(|(k, &v)| if k == 0 && v == 4 { 4 + grow } else { v }).collect(), *d))
        .collect();
    let size = |v: usize| if v == 0 { 0 } else { remap[v.min(4)] };
    let remapped = inputs.iter().map(|(s, d)| (s.iter().map(|&v| size(v)).collect(), *d)).collect();
    let mut flipped: Vec<(Vec<usize>, DType)> = inputs.to_vec();
    let i = flip.0 as usize % inputs.len();
    let nd = inputs[i].0.len();
    if nd > 0 {
        let ax = flip.1 as usize % nd;
        // The largest size among the inputs on this axis (aligned at the end).
        let widest = inputs
            .iter()
            .filter_map(|(s, _)| (s.len() + ax).checked_sub(nd).and_then(|k| s.get(k)))
            .copied()
            .max()
            .unwrap_or(1);
        let v = &mut flipped[i].0[ax];
        *v = match *v {
            0 => 0,
            1 => widest.max(2),
            _ => 1,
        };
    }
    vec![grown, remapped, flipped]
}

/// The device compiled calls run on: `KILN_FUZZ_DEVICE` (`cpu`, the
/// default, or `cuda:N` in a build with the `cuda` feature). The eager
/// results they are compared with are always the CPU's.
pub fn device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    *DEVICE.get_or_init(|| match std::env::var("KILN_FUZZ_DEVICE").ok().as_deref() {
        None | Some("") | Some("cpu") => Device::Cpu,
        Some(d) => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => panic!("KILN_FUZZ_DEVICE is `cpu` or `cuda:N`, not {d:?}"),
        },
    })
}

/// `args` on the fuzzed [`device`].
fn on_device(args: &[Array]) -> Vec<Array> {
    args.iter().map(|a| a.to_device(device()).expect("moving an input to the fuzzed device")).collect()
}

/// A large case's inputs and steps (see [`case`]): in each shape, sizes
/// above 1 become `c` on the last axis, `r` on the one before and 2 on
/// earlier ones (sizes that broadcast together still do); half the time
/// the program starts with a softmax and a normalization of the first
/// input (a reduction over rows, then elementwise work over them: a chain).
fn scaled_up(
    b: &mut Bytes,
    inputs: Vec<(Vec<usize>, DType)>,
    mut steps: Vec<Step>,
) -> (Vec<(Vec<usize>, DType)>, Vec<Step>) {
    let (r, c) = (b.pick(&[257usize, 300]), b.pick(&[64usize, 260, 1031]));
    let inputs = inputs
        .into_iter()
        .map(|(shape, dt)| {
            let nd = shape.len();
            let big = |i: usize| {
                if i + 1 == nd {
                    c
                } else if i + 2 == nd {
                    r
                } else {
                    2
                }
            };
            (shape.iter().enumerate().map(|(i, &d)| if d > 1 { big(i) } else { d }).collect(), dt)
        })
        .collect();
    if b.chance(50) {
        steps.splice(0..0, [Step { op: 28, a: 0, b: 0, c: 0, p: 1 }, Step { op: 37, a: 0, b: 0, c: 0, p: 1 }]);
    }
    (inputs, steps)
}

/// Fuzz target (b): a random program from `data`, compiled (normal or
/// shapeless, on the fuzzed [`device`]) against eager on the CPU on its
/// inputs, on new data, on views of the same shapes at an offset into
/// larger buffers, and (shapeless) on new shapes.
pub fn case(data: &[u8]) {
    let mut b = Bytes::new(data);
    let n_inputs = 1 + b.below(3);
    let inputs: Vec<(Vec<usize>, DType)> = (0..n_inputs)
        .map(|_| {
            let nd = b.below(4);
            let shape: Vec<usize> = (0..nd).map(|_| b.pick(&[0usize, 1, 1, 2, 3, 4, 4, 5, 7])).collect();
            (shape, b.pick(&[DType::F32, DType::F32, DType::F64, DType::I32, DType::F16, DType::BF16, DType::U8]))
        })
        .collect();
    let steps: Vec<Step> = (0..1 + b.below(12))
        .map(|_| Step { op: b.byte() % N_OPS, a: b.byte(), b: b.byte(), c: b.byte(), p: b.byte() })
        .collect();
    let seed = b.below(1000) as u64;
    let shapeless = b.chance(40);
    // About one case in 32 runs over rows large enough for the paths that
    // small arrays never take: row-blocked chains, row kernels (f32 and
    // f64), work split over threads, streamed stores. Its shapes are the
    // small ones scaled up (read last, so saved cases replay as before).
    let large = b.byte() >= 248;
    let (inputs, steps) = if large { scaled_up(&mut b, inputs, steps) } else { (inputs, steps) };
    let args = make_inputs(&inputs, seed);
    let mut decisions = vec![];
    let eager = run(&steps, &args, &mut decisions, false).expect("recording never fails");
    let (st, dec) = (steps.clone(), decisions.clone());
    let f = compile_with(
        move |xs: &[Array]| run(&st, xs, &mut dec.clone(), true),
        CompileOptions { shapeless, ..Default::default() },
    );
    let what = format!("inputs {inputs:?} steps {steps:?} seed {seed} shapeless {shapeless}");
    let mut tol = Tol::of(&inputs, &steps, &decisions);
    if large {
        // Sums over rows of up to 1031 values of up to about 10, in another
        // order, differ by up to n eps max|x| when they cancel.
        tol.abs = tol.abs.max(1e-3);
    }
    let got = f.call(&on_device(&args)[..]).unwrap_or_else(|e| panic!("compiled call failed: {e} | {what}"));
    for (k, (g, w)) in got.iter().zip(&eager).enumerate() {
        assert_close_tol(g, w, &format!("output {k} | {what}"), tol);
    }
    // A call at the traced shapes: no new trace, the eager results.
    let same_shapes = |args: &[Array], call: &str| {
        let want = run(&steps, args, &mut decisions.clone(), true).expect("replay at the same shapes");
        let got = f.call(&on_device(args)[..]).unwrap_or_else(|e| panic!("{call} failed: {e} | {what}"));
        assert_eq!(f.stats().traces, 1, "{call}: one trace | {what}");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close_tol(g, w, &format!("{call}, output {k} | {what}"), tol);
        }
    };
    // New data: a cache hit.
    same_shapes(&make_inputs(&inputs, seed + 7), "second call");
    // Views at an offset into larger buffers: kernels (and the plans they
    // keep between calls) must read each call's layout.
    same_shapes(&offset_views(&inputs, seed + 11), "call on views");
    if !shapeless || large {
        return;
    }
    let (grow, flip) = (1 + b.below(3), (b.byte(), b.byte()));
    let remap: Vec<usize> = (0..5).map(|_| 1 + b.below(5)).collect();
    for (c, shapes) in new_shapes(&inputs, grow, &remap, flip).into_iter().enumerate() {
        let args3 = make_inputs(&shapes, seed + 3 + c as u64);
        let want = replay_eager(&steps, &args3, &decisions);
        let got = f.call(&on_device(&args3)[..]);
        let on: Vec<Vec<usize>> = shapes.iter().map(|(s, _)| s.clone()).collect();
        match (want, got) {
            (Ok(w), Ok(g)) => {
                for (k, (g, w)) in g.iter().zip(&w).enumerate() {
                    assert_close_tol(g, w, &format!("shapeless output {k} on {on:?} | {what}"), tol);
                }
            }
            (Err(_), Err(_)) => {}
            // The one documented refusal: softmax traced on a non-empty
            // axis and called on an empty one.
            (Ok(_), Err(e)) => assert!(
                e.to_string().contains("shapeless") && e.to_string().contains("empty axis"),
                "eager works on {on:?}, compiled failed: {e} | {what}"
            ),
            (Err(e), Ok(_)) => panic!("eager fails on {on:?} ({e}), compiled did not | {what}"),
        }
    }
    assert_eq!(f.stats().traces, 1, "one trace across shapes | {what}");
}
