//! Differential testing: random programs (over 40 op kinds, broadcasting,
//! reductions, matmul, shape ops, several outputs, random dtypes and shapes)
//! must give the same results compiled as eagerly, in normal and shapeless
//! mode, including calls with new shapes. The programs, the eager oracle and
//! the tolerance live in `kiln_fuzz::programs`, shared with the fuzz target
//! that runs the same check on byte strings (see RELIABILITY.md).

use kiln::{compile, compile_with, Array, CompileOptions, DType, Result};
use kiln_fuzz::programs::*;
use proptest::prelude::*;

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
    let dtype = prop_oneof![
        Just(DType::F32),
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::I32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::U8)
    ];
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
        let tol = Tol::of(&inputs, &steps, &decisions);
        for (k, (g, w)) in got.iter().zip(&eager).enumerate() {
            assert_close_tol(g, w, &format!("output {k}"), tol);
        }
        // A second call with new data hits the cache and stays correct.
        let args2: Vec<Array> =
            inputs.iter().enumerate().map(|(i, (s, d))| make_input(s, *d, seed + 7 + i as u64)).collect();
        let eager2 = run(&steps, &args2, &mut decisions.clone(), true).unwrap();
        let got2 = f.call(&args2[..]).unwrap();
        prop_assert_eq!(f.stats().traces, 1);
        for (k, (g, w)) in got2.iter().zip(&eager2).enumerate() {
            assert_close_tol(g, w, &format!("second call, output {k}"), tol);
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
        let tol = Tol::of(&inputs, &steps, &decisions);
        for (c, shapes) in new_shapes(&inputs, grow, &remap, flip).into_iter().enumerate() {
            let args2 = make_inputs(&shapes, seed + 3 + c as u64);
            let want = replay_eager(&steps, &args2, &decisions);
            let got = f.call(&args2[..]);
            let on = shapes.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    for (k, (g, w)) in g.iter().zip(&w).enumerate() {
                        assert_close_tol(g, w, &format!("shapeless output {k} on {on:?}"), tol);
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
