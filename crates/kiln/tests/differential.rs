//! Differential testing: random programs (over 30 op kinds, broadcasting,
//! reductions, matmul, shape ops, several outputs, random dtypes and shapes)
//! must give the same results compiled as eagerly, in normal and shapeless
//! mode, including calls with new shapes.
//!
//! Tolerance: integer and bool results must be equal. Float results may
//! differ by 1e-5 relative to the larger magnitude (about 80 ulp of f32) plus
//! 1e-6 absolute: fused reductions sum in a different order than eager ones
//! (a few ulp), and a following `exp` or `logsumexp` scales that difference
//! up; elementwise-only programs agree to within a few ulp. NaN must match
//! NaN.

use kiln::{compile, compile_with, Array, CompileOptions, DType, Result};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Step {
    op: u8,
    a: u8,
    b: u8,
    c: u8,
    p: u8,
}

const N_OPS: u8 = 42;

fn pick(vals: &[Array], i: u8) -> &Array {
    &vals[i as usize % vals.len()]
}

/// Applies one step; `Ok(None)` or `Err` when the op does not apply to these operands
/// (a dtype or shape error at build time is a skip, decided by shapes and
/// dtypes only, so tracing and eager runs decide alike).
fn apply(s: &Step, vals: &[Array], n_inputs: usize) -> Result<Option<Array>> {
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
    let float = x.dtype().is_float();
    let r = match s.op % N_OPS {
        0 => x.neg(),
        1 => x.abs(),
        2 if float => x.exp(),
        3 if float => x.abs()?.log1p(),
        4 if float => x.sin(),
        5 if float => x.tanh(),
        6 if float => x.sigmoid(),
        7 if float => x.abs()?.sqrt(),
        8 => x.square(),
        9 => rx.floor(),
        10 => x + y,
        11 => x - y,
        12 => x * y,
        13 => x / y,
        14 => x.maximum(y),
        15 => x.minimum(y),
        16 => kiln::where_(&rx.less(ry)?, y, z),
        17 => x.astype([DType::F32, DType::F64, DType::I32][s.p as usize % 3]),
        18 if x.ndim() > 0 => x.sum(axis(x), s.p.is_multiple_of(2)),
        19 if x.ndim() > 0 => x.max(axis(x), s.p % 2 == 1),
        20 if x.ndim() > 0 => x.mean(axis(x), s.p.is_multiple_of(2)),
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
        28 if x.ndim() > 0 && float => x.softmax(axis(x)),
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
            // The softmax denominator as users write it.
            (x - &x.max(axis(x), true)?)?.exp()?.sum(axis(x), s.p.is_multiple_of(2))
        }
        _ => return Ok(None),
    };
    r.map(Some)
}

/// Indices in `vals` (of length `n`, the first `n_inputs` the arguments)
/// of the values step `s` reads.
fn reads(s: &Step, n: usize, n_inputs: usize) -> Vec<usize> {
    let (x, y, z) = (s.a as usize % n, s.b as usize % n, s.c as usize % n);
    let (rx, ry) = (s.a as usize % n_inputs, s.b as usize % n_inputs);
    match s.op % N_OPS {
        9 | 21 | 37 => vec![rx],
        10..=15 | 22 | 26 | 27 | 41 => vec![x, y],
        16 => vec![rx, ry, y, z],
        30 | 31 => vec![rx, ry],
        _ => vec![x],
    }
}

/// Replays the recorded steps eagerly on new inputs, as the oracle of a
/// shapeless call: a step that fails (its shapes no longer fit) poisons its
/// value and every value computed from it, and the result is that error
/// only when an output is poisoned (the compiled program drops dead steps).
fn replay_eager(steps: &[Step], inputs: &[Array], decisions: &[bool]) -> Result<Vec<Array>> {
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
fn run(steps: &[Step], inputs: &[Array], decisions: &mut Vec<bool>, replay: bool) -> Result<Vec<Array>> {
    let mut vals: Vec<Array> = inputs.to_vec();
    for (k, s) in steps.iter().enumerate() {
        let out = apply(s, &vals, inputs.len());
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

fn make_input(shape: &[usize], dtype: DType, seed: u64) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 100.0 - 5.0).round_ties_even() / 2.0)
        .collect();
    Array::from_slice(&v, shape).unwrap().astype(dtype).unwrap()
}

/// One input per `(shape, dtype)`, the k-th from seed `seed + k`.
fn make_inputs(inputs: &[(Vec<usize>, DType)], seed: u64) -> Vec<Array> {
    inputs.iter().enumerate().map(|(i, (s, d))| make_input(s, *d, seed + i as u64)).collect()
}

fn assert_close(got: &Array, want: &Array, what: &str) {
    assert_close_abs(got, want, what, 1e-6)
}

/// Floats within 1e-5 relative plus `abs` absolute; integers exactly.
fn assert_close_abs(got: &Array, want: &Array, what: &str, abs: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.astype(DType::F64).unwrap(), want.astype(DType::F64).unwrap());
    let (g, w) = (g.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if want.dtype().is_float() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + abs;
            assert!(ok, "{what}: element {i}: compiled {a} vs eager {b}");
        } else {
            assert_eq!(a, b, "{what}: element {i}");
        }
    }
}

fn shapes_strategy() -> impl Strategy<Value = Vec<(Vec<usize>, DType)>> {
    let shape = prop_oneof![
        Just(vec![4, 3]),
        Just(vec![3]),
        Just(vec![1, 3]),
        Just(vec![4, 1]),
        Just(vec![2, 4, 3]),
        Just(vec![3, 4]),
        Just(vec![]),
        Just(vec![0, 3]),
    ];
    let dtype = prop_oneof![Just(DType::F32), Just(DType::F32), Just(DType::F64), Just(DType::I32)];
    prop::collection::vec((shape, dtype), 1..4)
}

/// Shapes large enough for row-blocked chains (at least 64Ki elements over
/// a shared leading axis), with per-row, per-column and scalar companions.
fn large_shapes_strategy() -> impl Strategy<Value = Vec<(Vec<usize>, DType)>> {
    let shape = prop_oneof![
        Just(vec![300, 260]),
        Just(vec![300, 260]),
        Just(vec![300, 1]),
        Just(vec![1, 260]),
        Just(vec![260]),
        Just(vec![]),
    ];
    let dtype = prop_oneof![Just(DType::F32), Just(DType::F32), Just(DType::F64)];
    prop::collection::vec((shape, dtype), 1..4)
}

fn steps_strategy() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (0..N_OPS, any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(op, a, b, c, p)| Step {
            op,
            a,
            b,
            c,
            p,
        }),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_equals_eager(inputs in shapes_strategy(), steps in steps_strategy(), seed in 0u64..1000) {
        let args = make_inputs(&inputs, seed);
        let mut decisions = vec![];
        let eager = run(&steps, &args, &mut decisions, false).unwrap();
        let st = steps.clone();
        let dec = decisions.clone();
        let f = compile(move |xs: &[Array]| run(&st, xs, &mut dec.clone(), true));
        let got = f.call(&args[..]).unwrap();
        for (k, (g, w)) in got.iter().zip(&eager).enumerate() {
            assert_close(g, w, &format!("output {k}"));
        }
        // A second call with new data hits the cache and stays correct.
        let args2: Vec<Array> =
            inputs.iter().enumerate().map(|(i, (s, d))| make_input(s, *d, seed + 7 + i as u64)).collect();
        let eager2 = run(&steps, &args2, &mut decisions.clone(), true).unwrap();
        let got2 = f.call(&args2[..]).unwrap();
        prop_assert_eq!(f.stats().traces, 1);
        for (k, (g, w)) in got2.iter().zip(&eager2).enumerate() {
            assert_close(g, w, &format!("second call, output {k}"));
        }
    }

    #[test]
    fn large_rows_compiled_equals_eager(inputs in large_shapes_strategy(), steps in steps_strategy(), seed in 0u64..1000) {
        // Few cases (each runs ~80K-element kernels), enough to exercise the
        // row-blocked chains on random programs.
        if seed % 12 != 0 {
            return Ok(());
        }
        // Start from a softmax and a normalization of the first input (a
        // reduction, then elementwise work over the same rows: a chain).
        let mut steps = steps;
        steps.splice(0..0, [Step { op: 28, a: 0, b: 0, c: 0, p: 1 }, Step { op: 37, a: 0, b: 0, c: 0, p: 1 }]);
        let args = make_inputs(&inputs, seed);
        let mut decisions = vec![];
        let eager = run(&steps, &args, &mut decisions, false).unwrap();
        let st = steps.clone();
        let f = compile(move |xs: &[Array]| run(&st, xs, &mut decisions.clone(), true));
        let got = f.call(&args[..]).unwrap();
        // Sums over rows of 260 values of up to about 10 in another order
        // differ by up to n * eps * max|x| (about 2e-4) when they cancel.
        for (k, (g, w)) in got.iter().zip(&eager).enumerate() {
            assert_close_abs(g, w, &format!("large output {k}"), 5e-4);
        }
    }

    #[test]
    fn shapeless_compiled_equals_eager_on_new_shapes(
        inputs in shapes_strategy(),
        steps in steps_strategy(),
        seed in 0u64..1000,
        grow in 1usize..4,
        remap in prop::collection::vec(1usize..6, 5),
        flip in (any::<u8>(), any::<u8>()),
    ) {
        let args = make_inputs(&inputs, seed);
        let mut decisions = vec![];
        run(&steps, &args, &mut decisions, false).unwrap();
        let st = steps.clone();
        let dec = decisions.clone();
        let f = compile_with(
            move |xs: &[Array]| run(&st, xs, &mut dec.clone(), true),
            CompileOptions { shapeless: true, ..Default::default() },
        );
        f.call(&args[..]).unwrap();
        for (c, shapes) in new_shapes(&inputs, grow, &remap, flip).into_iter().enumerate() {
            let args2 = make_inputs(&shapes, seed + 3 + c as u64);
            let want = replay_eager(&steps, &args2, &decisions);
            let got = f.call(&args2[..]);
            let on = shapes.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    for (k, (g, w)) in g.iter().zip(&w).enumerate() {
                        assert_close(g, w, &format!("shapeless output {k} on {on:?}"));
                    }
                }
                (Err(_), Err(e)) => prop_assert!(!e.to_string().is_empty()),
                // The one trap left: softmax branches in Rust on an empty
                // axis, so one traced non-empty refuses an empty one.
                (Ok(_), Err(e)) => prop_assert!(
                    e.to_string().contains("shapeless") && e.to_string().contains("empty axis"),
                    "eager works on {:?}, compiled failed: {}", on, e
                ),
                (Err(e), Ok(_)) => prop_assert!(false, "eager fails on {:?} ({}), compiled did not", on, e),
            }
        }
        prop_assert_eq!(f.stats().traces, 1);
    }
}

/// New shapes for a shapeless call (ranks and dtypes kept): every leading
/// dimension 4 grown by `grow` (a batch axis); every size `v` (up to 4)
/// mapped to `remap[v]` in all inputs at once (sizes that broadcast
/// together still do, unless one becomes 1); and one input's axis flipped
/// between 1 and the largest size on that axis among the inputs, so that
/// another operand broadcasts (or none can). Empty axes stay empty: ops
/// such as `softmax` branch on that in Rust, at trace time.
fn new_shapes(
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

#[test]
fn differential_covers_at_least_twenty_op_kinds() {
    let x = make_input(&[4, 3], DType::F32, 1);
    let kinds = (0..N_OPS)
        .filter(|&op| {
            apply(&Step { op, a: 0, b: 0, c: 0, p: 0 }, std::slice::from_ref(&x), 1).is_ok_and(|r| r.is_some())
        })
        .count();
    assert!(kinds >= 20, "{kinds}");
}

#[test]
fn eager_and_compiled_agree_on_a_fixed_program() -> Result<()> {
    let steps: Vec<Step> = (0..N_OPS).map(|op| Step { op, a: op, b: op / 2, c: 1, p: op }).collect();
    let args = vec![make_input(&[4, 3], DType::F32, 5), make_input(&[3], DType::F32, 6)];
    let mut dec = vec![];
    let eager = run(&steps, &args, &mut dec, false)?;
    let f = compile(move |xs: &[Array]| run(&steps, xs, &mut dec.clone(), true));
    let got = f.call(&args[..])?;
    for (g, w) in got.iter().zip(&eager) {
        assert_close(g, w, "fixed");
    }
    Ok(())
}

/// Shapeless cases proptest found once: (inputs, steps, seed, grow).
#[test]
fn shapeless_regressions() -> Result<()> {
    let s = |op, a, p| Step { op, a, b: 0, c: 0, p };
    type Case = (Vec<(Vec<usize>, DType)>, Vec<Step>, u64, usize);
    let cases: Vec<Case> = vec![(
        // A variance of x / x (NaN where x is 0.0) in one pass.
        vec![(vec![4, 1], DType::F32)],
        vec![s(13, 0, 0), s(0, 0, 0), s(34, 64, 126), s(0, 0, 0), s(35, 28, 0), s(0, 0, 0), s(0, 0, 0), s(0, 0, 0)],
        94,
        1,
    )];
    for (inputs, steps, seed, grow) in cases {
        let args = make_inputs(&inputs, seed);
        let mut decisions = vec![];
        run(&steps, &args, &mut decisions, false)?;
        let dec = decisions.clone();
        let st = steps.clone();
        let f = compile_with(
            move |xs: &[Array]| run(&st, xs, &mut dec.clone(), true),
            CompileOptions { shapeless: true, ..Default::default() },
        );
        f.call(&args[..])?;
        let args2: Vec<Array> = inputs
            .iter()
            .enumerate()
            .map(|(i, (s, d))| {
                let s2: Vec<usize> =
                    s.iter().enumerate().map(|(k, &v)| if k == 0 && v == 4 { 4 + grow } else { v }).collect();
                make_input(&s2, *d, seed + 3 + i as u64)
            })
            .collect();
        let want = run(&steps, &args2, &mut decisions.clone(), true)?;
        for (k, (g, w)) in f.call(&args2[..])?.iter().zip(&want).enumerate() {
            assert_close(g, w, &format!("shapeless regression output {k}"));
        }
    }
    Ok(())
}

/// Cases proptest found once, kept as fixed regressions.
#[test]
fn regressions() -> Result<()> {
    let s = |op, a, b, p| Step { op, a, b, c: 0, p };
    type Case = (Vec<(Vec<usize>, DType)>, Vec<Step>, u64);
    let cases: Vec<Case> = vec![
        (
            // A normalization of softmax sums (all about 1): it once read a
            // computed value, whose last-ulp differences it magnified.
            vec![(vec![2, 4, 3], DType::F32)],
            vec![s(28, 0, 0, 202), s(0, 0, 0, 0), s(18, 160, 0, 220), s(0, 0, 0, 0), s(37, 213, 0, 128)],
            0,
        ),
        (
            // A remainder by the sum of a softmax: fused and eager sums differ by an
            // ulp, which remainder amplifies (now it reads only arguments).
            vec![(vec![2, 4, 3], DType::F32)],
            vec![
                s(0, 0, 0, 0),
                s(14, 0, 0, 0),
                s(28, 0, 0, 139),
                s(0, 0, 0, 0),
                s(18, 113, 0, 142),
                s(0, 0, 0, 0),
                s(30, 0, 54, 0),
            ],
            0,
        ),
        (
            // Two groups that read each other through a matmul: joining one group
            // once made the kernel graph cyclic.
            vec![(vec![3], DType::F64), (vec![3], DType::F32)],
            vec![
                s(10, 35, 12, 0),
                s(22, 7, 2, 0),
                s(18, 201, 0, 0),
                s(10, 17, 114, 0),
                s(0, 0, 0, 0),
                s(10, 81, 136, 0),
            ],
            0,
        ),
        (
            // Softmax and normalization over rows of one element, divided
            // (1 / +-0) and summed: +inf and -inf give NaN, so the sign of
            // each zero matters (the sum of [-0.0] is -0.0, as in NumPy).
            vec![(vec![300, 1], DType::F32)],
            vec![
                s(28, 0, 0, 1),
                s(37, 0, 0, 1),
                s(0, 0, 0, 0),
                s(13, 109, 170, 0),
                s(0, 0, 0, 0),
                s(0, 0, 0, 0),
                s(0, 0, 0, 0),
                s(18, 132, 0, 30),
            ],
            876,
        ),
    ];
    for (inputs, steps, seed) in cases {
        let args = make_inputs(&inputs, seed);
        let mut dec = vec![];
        let eager = run(&steps, &args, &mut dec, false)?;
        let f = compile(move |xs: &[Array]| run(&steps, xs, &mut dec.clone(), true));
        for (g, w) in f.call(&args[..])?.iter().zip(&eager) {
            assert_close(g, w, "regression");
        }
    }
    Ok(())
}
