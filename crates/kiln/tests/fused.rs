//! The fused elementwise executor on every input layout (contiguous,
//! transposed, negatively strided, broadcast, 0-d scalar) at sizes around
//! the tile length and the parallel threshold, compiled and eager, against
//! plain f64 loops; and multi-kernel programs whose intermediates are
//! overwritten in place by later kernels.

mod common;

use common::*;
use kiln::backend::cpu::strided::PAR_THRESHOLD;
use kiln::backend::cpu::tile::TILE;
use kiln::ops::binary::{greater, where_};
use kiln::{compile, Array, Result};

/// `(r, c)` shapes whose element counts straddle the tile and the parallel threshold.
fn shapes() -> Vec<(usize, usize)> {
    let split = |n: usize| {
        let r = (1..=64).rev().find(|&r| n.is_multiple_of(r)).expect("1 divides n");
        (r, n / r)
    };
    vec![
        (1, 1),
        split(TILE - 1),
        split(TILE),
        split(TILE + 1),
        split(2 * TILE + 1),
        split(PAR_THRESHOLD - 1),
        split(PAR_THRESHOLD + 7),
        (181, 183),
    ]
}

/// The function under test: several ops of one fused group, mixing three
/// operands and a 0-d scalar.
fn f(x: &Array, y: &Array, s: &Array) -> Result<Array> {
    let t = (((x * y)? + s)?.tanh()? * x)?;
    (t - (y * 0.25f32)?.erf()?)? * 1.5f32
}

fn reference(x: f64, y: f64, s: f64) -> f64 {
    (((x * y + s).tanh() * x) - erf_ref(y * 0.25)) * 1.5
}

fn check(got: &Array, want: &[f64], what: &str) {
    let got = values_f64(got);
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w, 2e-5, 2e-6), "{what}: element {i}: got {g}, want {w}");
    }
}

#[test]
fn fused_groups_read_every_layout_at_tile_boundaries() -> Result<()> {
    let mut rng = Rng::new(7);
    let compiled = compile(f);
    for (r, c) in shapes() {
        for (vx, vy) in [
            (View::Contiguous, View::BroadcastRow),
            (View::Transposed, View::Reversed),
            (View::Reversed, View::BroadcastCol),
            (View::BroadcastCol, View::Transposed),
            (View::Contiguous, View::Contiguous),
        ] {
            let xs: Vec<f32> = rng.floats_f32(r * c, -3.0, 3.0);
            let ys: Vec<f32> = rng.floats_f32(r * c, -2.0, 2.0);
            let (x, xl) = make_view(vx, &xs, r, c, f32::NAN)?;
            let (y, yl) = make_view(vy, &ys, r, c, f32::NAN)?;
            let s = Array::from_slice(&[0.375f32], &[])?;
            let want: Vec<f64> = xl.iter().zip(&yl).map(|(&a, &b)| reference(a as f64, b as f64, 0.375)).collect();
            let what = format!("{r}x{c} x {vx:?} y {vy:?}");
            check(&compiled.call((&x, &y, &s))?, &want, &format!("compiled {what}"));
            check(&f(&x, &y, &s)?, &want, &format!("eager {what}"));
        }
    }
    Ok(())
}

/// Two fused groups around a reduction: the first group's output is freed
/// by the last kernel, which may write its result over it.
fn centered(x: &Array, y: &Array) -> Result<Array> {
    let h = (x * y)?.tanh()?;
    let m = h.mean(-1, true)?;
    ((&h - &m)? * 3.0f32)? + (&h * &h)?
}

#[test]
fn intermediates_overwritten_in_place_give_the_same_values() -> Result<()> {
    let mut rng = Rng::new(11);
    let compiled = compile(centered);
    for (r, c) in shapes() {
        for vx in [View::Contiguous, View::Transposed, View::Reversed] {
            let xs: Vec<f32> = rng.floats_f32(r * c, -2.0, 2.0);
            let ys: Vec<f32> = rng.floats_f32(c, -2.0, 2.0);
            let (x, xl) = make_view(vx, &xs, r, c, f32::NAN)?;
            let y = Array::from_slice(&ys, &[c])?;
            let mut want = vec![0.0; r * c];
            for i in 0..r {
                let h: Vec<f64> = (0..c).map(|j| (xl[i * c + j] as f64 * ys[j] as f64).tanh()).collect();
                let m = h.iter().sum::<f64>() / c as f64;
                for j in 0..c {
                    want[i * c + j] = (h[j] - m) * 3.0 + h[j] * h[j];
                }
            }
            let what = format!("{r}x{c} x {vx:?}");
            check(&compiled.call((&x, &y))?, &want, &format!("compiled {what}"));
            check(&centered(&x, &y)?, &want, &format!("eager {what}"));
            // The arguments are never overwritten.
            assert_eq!(values_f64(&x), xl.iter().map(|&v| v as f64).collect::<Vec<_>>(), "{what}: x changed");
        }
    }
    Ok(())
}

/// A concatenation (its own kernel, a fresh buffer) feeding a fused group
/// that is its last reader: the group may write over the concatenation.
fn joined(x: &Array, y: &Array) -> Result<Array> {
    let j = kiln::concatenate(&[x.tanh()?, y.clone()], 0)?;
    ((&j * 3.0f32)? + 1.0f32)?.erf()
}

#[test]
fn a_freed_intermediate_written_over_gives_the_same_values() -> Result<()> {
    let mut rng = Rng::new(5);
    let compiled = compile(joined);
    for (r, c) in shapes() {
        for vy in [View::Contiguous, View::Reversed, View::BroadcastRow] {
            let xs: Vec<f32> = rng.floats_f32(r * c, -2.0, 2.0);
            let ys: Vec<f32> = rng.floats_f32(r * c, -1.0, 1.0);
            let x = Array::from_slice(&xs, &[r, c])?;
            let (y, yl) = make_view(vy, &ys, r, c, f32::NAN)?;
            let j = xs.iter().map(|&v| (v as f64).tanh()).chain(yl.iter().map(|&v| v as f64));
            let want: Vec<f64> = j.map(|v| erf_ref(v * 3.0 + 1.0)).collect();
            let what = format!("{r}x{c} y {vy:?}");
            check(&compiled.call((&x, &y))?, &want, &format!("compiled {what}"));
            check(&joined(&x, &y)?, &want, &format!("eager {what}"));
            assert_eq!(values_f64(&y), yl.iter().map(|&v| v as f64).collect::<Vec<_>>(), "{what}: y changed");
        }
    }
    Ok(())
}

#[test]
fn matmul_epilogue_results_are_unchanged_by_writing_over_the_product() -> Result<()> {
    let mut rng = Rng::new(3);
    let mm = compile(|a: &Array, b: &Array, bias: &Array| (a.matmul(b)? + bias)?.tanh()? * 2.0f32);
    for (m, k, n) in [(3, 5, 7), (33, 17, TILE + 1), (64, 8, 600)] {
        let av: Vec<f32> = rng.floats_f32(m * k, -1.0, 1.0);
        let bv: Vec<f32> = rng.floats_f32(k * n, -1.0, 1.0);
        let biasv: Vec<f32> = rng.floats_f32(n, -1.0, 1.0);
        let (a, b, bias) =
            (Array::from_slice(&av, &[m, k])?, Array::from_slice(&bv, &[k, n])?, Array::from_slice(&biasv, &[n])?);
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|l| av[i * k + l] as f64 * bv[l * n + j] as f64).sum();
                want[i * n + j] = (dot + biasv[j] as f64).tanh() * 2.0;
            }
        }
        let got = values_f64(&mm.call((&a, &b, &bias))?);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(close(g, w, 1e-4, 1e-5), "{m}x{k}x{n}: element {i}: got {g}, want {w}");
        }
    }
    Ok(())
}

#[test]
fn broadcast_rows_longer_than_a_tile_refill_when_the_row_changes() -> Result<()> {
    // A per-row value ([r, 1]) over rows longer than a tile is one value per
    // tile, kept in its register while the row lasts; rows of 2.5 tiles and
    // of exactly 2 tiles, and more rows than one task's chunk.
    for (r, c) in [(7usize, 5 * TILE / 2), (40, 2 * TILE)] {
        let xs: Vec<f32> = (0..r * c).map(|i| (i % 97) as f32 * 0.25 - 3.0).collect();
        let col: Vec<f32> = (0..r).map(|i| i as f32 * 1.5 - 2.0).collect();
        let row: Vec<f32> = (0..c).map(|j| (j % 13) as f32 * 0.5).collect();
        let x = Array::from_vec(xs.clone(), &[r, c])?;
        let cv = Array::from_vec(col.clone(), &[r, 1])?;
        let rv = Array::from_vec(row.clone(), &[1, c])?;
        let f = compile(|x: &Array, cv: &Array, rv: &Array| ((x - cv)? * rv)? + cv);
        for got in [f.call((&x, &cv, &rv))?, (((&x - &cv)? * &rv)? + &cv)?] {
            let got = got.to_vec::<f32>()?;
            for i in 0..r {
                for j in 0..c {
                    let (xv, a, b) = (xs[i * c + j] as f64, col[i] as f64, row[j] as f64);
                    let want = (xv - a) * b + a;
                    let g = got[i * c + j] as f64;
                    assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "({i}, {j}): {g} vs {want}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn tiles_end_where_rows_end_so_row_and_column_broadcasts_are_read_in_place() -> Result<()> {
    // A layernorm-like epilogue: per-row values ([r, 1]) and per-column
    // values ([c]) over rows shorter than a tile. Tiles that end at row
    // ends read both in place; rows too short for a tile of their own
    // (below 256) are gathered. Sizes stay on the calling thread.
    let f = compile(|x: &Array, cv: &Array, rv: &Array| ((x - cv)? * rv)? + cv);
    for (r, c, gathers) in [(5usize, 1024usize, false), (9, 300, false), (40, 100, true)] {
        assert!(r * c < PAR_THRESHOLD);
        let xs: Vec<f32> = (0..r * c).map(|i| (i % 97) as f32 * 0.25 - 3.0).collect();
        let col: Vec<f32> = (0..r).map(|i| i as f32 * 1.5 - 2.0).collect();
        let row: Vec<f32> = (0..c).map(|j| (j % 13) as f32 * 0.5).collect();
        let x = Array::from_vec(xs.clone(), &[r, c])?;
        let cv = Array::from_vec(col.clone(), &[r, 1])?;
        let rv = Array::from_vec(row.clone(), &[c])?;
        f.call((&x, &cv, &rv))?;
        let before = kiln::backend::cpu::interpreter::gathered_tiles();
        let got = f.call((&x, &cv, &rv))?.to_vec::<f32>()?;
        let gathered = kiln::backend::cpu::interpreter::gathered_tiles() - before;
        assert_eq!(gathered > 0, gathers, "{r}x{c}: {gathered} tiles gathered");
        for i in 0..r {
            for j in 0..c {
                let want = (xs[i * c + j] - col[i]) * row[j] + col[i];
                assert_eq!(got[i * c + j], want, "{r}x{c} ({i}, {j})");
            }
        }
    }
    Ok(())
}

#[test]
fn broadcast_operands_in_every_position_are_read_as_one_value() -> Result<()> {
    // A 0-d argument and a per-row [r, 1] argument (one value per tile once
    // rows are longer than a tile) on either side of binary ops, in each
    // operand of `where`, and alone under an op (computed once, repeated).
    for (r, c) in [(3usize, 5 * TILE / 2), (37, 41)] {
        let xs: Vec<f32> = (0..r * c).map(|i| (i % 89) as f32 * 0.125 - 5.0).collect();
        let col: Vec<f32> = (0..r).map(|i| i as f32 * 0.75 - 1.0).collect();
        let x = Array::from_vec(xs.clone(), &[r, c])?;
        let cv = Array::from_vec(col.clone(), &[r, 1])?;
        let s = Array::from_slice(&[0.5f32], &[])?;
        let f = |x: &Array, cv: &Array, s: &Array| -> Result<Array> {
            let a = where_(&greater(x, s)?, &(s - x)?, &(cv * x)?)?; // (tile, value, tile)
            let b = where_(&greater(cv, s)?, x, s)?; // (value, tile, value)
            let e = (s.exp()? * 2.0f32)?; // value only
            ((a + b)? + (e - cv)?)? / s
        };
        let want = |i: usize, j: usize| -> f64 {
            let (xv, cvv, sv) = (xs[i * c + j] as f64, col[i] as f64, 0.5f64);
            let a = if xv > sv { sv - xv } else { cvv * xv };
            let b = if cvv > sv { xv } else { sv };
            ((a + b) + (sv.exp() * 2.0 - cvv)) / sv
        };
        let compiled = compile(f);
        for (what, got) in [("compiled", compiled.call((&x, &cv, &s))?), ("eager", f(&x, &cv, &s)?)] {
            let got = got.to_vec::<f32>()?;
            for i in 0..r {
                for j in 0..c {
                    let (g, w) = (got[i * c + j] as f64, want(i, j));
                    assert!(close(g, w, 1e-5, 1e-5), "{what} {r}x{c} ({i}, {j}): {g} vs {w}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn launches_learning_how_to_store_give_the_same_bits() -> Result<()> {
    // Past the threshold, a group's launches try streaming and ordinary
    // stores in turn and keep the faster: every call's values are the same,
    // an elementwise kernel's and a blocked one's (a transpose).
    use kiln::backend::cpu::stream;
    let limit = stream::stream_min_working_set();
    stream::set_stream_min_working_set(1 << 16);
    let before = stream::learned();
    let run = || -> Result<()> {
        let n = 100_003;
        let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.004 - 2.0).collect();
        let x = Array::from_vec(xs.clone(), &[n])?;
        let s = 311;
        let m = Array::from_vec(xs[..s * s].to_vec(), &[s, s])?;
        let g = compile(|x: &Array| (x * 3.0f32)? - 1.0f32);
        let t = compile(|m: &Array| (m * 2.0f32)? + &m.t()?);
        for call in 0..stream::TRIALS + 2 {
            let got = g.call(&x)?.to_vec::<f32>()?;
            for (i, (&gv, &xv)) in got.iter().zip(&xs).enumerate() {
                assert_eq!(gv, xv * 3.0 - 1.0, "call {call}, element {i}");
            }
            let got = t.call(&m)?.to_vec::<f32>()?;
            for i in 0..s {
                for j in 0..s {
                    let want = xs[i * s + j] * 2.0 + xs[j * s + i];
                    assert_eq!(got[i * s + j], want, "call {call}, transposed sum ({i}, {j})");
                }
            }
        }
        Ok(())
    };
    let result = run();
    stream::set_stream_min_working_set(limit);
    result?;
    assert!(stream::learned() >= before + 2, "both groups learned their stores");
    Ok(())
}

#[test]
fn outputs_past_the_streaming_threshold_hold_every_element() -> Result<()> {
    // An elementwise kernel bound by memory whose input and output pass
    // what the cache keeps, and row sinks that would pass it with an input
    // of their size, are written with streaming stores, tile by tile and
    // row block by row block; an odd length leaves unaligned heads and
    // tails.
    use kiln::backend::cpu::stream;
    let cached = stream::stream_min_working_set().min(stream::MEMORY_BOUND_MAX_CACHED);
    let n = (cached / 8).max(stream::STREAM_MIN_BYTES / 4) + 4099;
    assert!(stream::streams(n * 8, 2), "x * 3 - 1 over {n} elements streams");
    let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.004 - 2.0).collect();
    let x = Array::from_vec(xs.clone(), &[n])?;
    let g = compile(|x: &Array| (x * 3.0f32)? - 1.0f32);
    let got = g.call(&x)?.to_vec::<f32>()?;
    for (i, (&gv, &xv)) in got.iter().zip(&xs).enumerate() {
        assert_eq!(gv, xv * 3.0 - 1.0, "element {i}");
    }
    // A row-blocked layernorm whose output sink passes the threshold.
    let (r, c) = (300usize, 3499usize);
    let x = Array::from_vec(xs[..r * c].to_vec(), &[r, c])?;
    let ln = |x: &Array| -> Result<Array> {
        let m = x.mean(-1, true)?;
        let d = (x - &m)?;
        &d * (d.square()?.mean(-1, true)? + 1e-5f32)?.rsqrt()?
    };
    // The limit lowered for this call only, so the 4 MiB rows stream.
    let limit = stream::stream_min_working_set();
    stream::set_stream_min_working_set(1 << 16);
    assert!(stream::rows_stream(r * c * 4), "layernorm's rows stream");
    let got = compile(ln).call(&x).and_then(|y| y.to_vec::<f32>());
    stream::set_stream_min_working_set(limit);
    let (got, want) = (got?, ln(&x)?.to_vec::<f32>()?);
    assert_eq!(got.len(), want.len());
    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!(close(a as f64, b as f64, 1e-4, 1e-5), "layernorm element {i}: {a} vs {b}");
    }
    Ok(())
}

/// Reductions absorbing a fused producer fold tile by tile from registers:
/// rows shorter than a tile (several rows per tile), longer than one (a row
/// over several tiles), spaces large enough to split their rows among
/// threads, and every view of the input, against f64 sums of the same f32
/// values.
fn stats(x: &Array, y: &Array) -> Result<Vec<Array>> {
    let p = (x * y)?;
    Ok(vec![
        (&p + 1.0f32)?.sum(-1, false)?,
        p.max(-1, false)?,
        (x - y)?.min(-1, true)?,
        x.square()?.mean(-1, false)?,
        p.sum(kiln::Axes::All, false)?,
    ])
}

#[test]
fn fused_reductions_fold_tile_by_tile_like_the_reference() -> Result<()> {
    let mut rng = Rng::new(11);
    let compiled = compile(stats);
    let shapes = [
        (1, 1),
        (3, 5),
        (37, 61),
        (5, TILE + 3),
        (3, 2 * TILE + 1),
        (1, 1 << 15),
        (16, 256),
        (301, 257),
        (23, 2 * TILE + 5),
    ];
    for (r, c) in shapes {
        for view in [View::Contiguous, View::Transposed, View::BroadcastRow] {
            let mut xs = rng.floats_f32(r * c, -2.0, 2.0);
            let ys = rng.floats_f32(r * c, -2.0, 2.0);
            if r > 2 {
                xs[c + c / 2] = f32::NAN; // row 1 of the contiguous layout
            }
            let (x, xl) = make_view(view, &xs, r, c, 0.0)?;
            let y = Array::from_slice(&ys, &[r, c])?;
            let rows = |f: &dyn Fn(usize) -> f64| -> Vec<f64> { (0..r).map(f).collect() };
            let at = |i: usize, j: usize| (xl[i * c + j] as f64, ys[i * c + j] as f64);
            let prod = |i: usize, j: usize| {
                let (a, b) = at(i, j);
                (a as f32 * b as f32) as f64
            };
            let fold = |i: usize, f: &dyn Fn(usize, usize) -> f64, init: f64, m: fn(f64, f64) -> f64| {
                (0..c).fold(init, |acc, j| {
                    let v = f(i, j);
                    if v.is_nan() || acc.is_nan() {
                        f64::NAN
                    } else {
                        m(acc, v)
                    }
                })
            };
            let want: Vec<Vec<f64>> = vec![
                rows(&|i| fold(i, &|i, j| prod(i, j) + 1.0, 0.0, |a, v| a + v)),
                rows(&|i| fold(i, &prod, f64::NEG_INFINITY, f64::max)),
                rows(&|i| fold(i, &|i, j| (at(i, j).0 as f32 - at(i, j).1 as f32) as f64, f64::INFINITY, f64::min)),
                rows(&|i| fold(i, &|i, j| at(i, j).0 * at(i, j).0, 0.0, |a, v| a + v) / c as f64),
                vec![(0..r).map(|i| fold(i, &prod, 0.0, |a, v| a + v)).sum()],
            ];
            for (mode, got) in [("compiled", compiled.call((&x, &y))?), ("eager", stats(&x, &y)?)] {
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    let g = values_f64(g);
                    assert_eq!(g.len(), w.len(), "{mode} {r}x{c} {view:?} output {k}");
                    for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
                        let ok = (g.is_nan() && w.is_nan()) || close(g, w, 1e-5, 1e-5 * c as f64 * r as f64);
                        assert!(ok, "{mode} {r}x{c} {view:?} output {k} row {i}: got {g}, want {w}");
                    }
                }
            }
        }
    }
    // A sum of negative zeros is -0, as in eager and NumPy.
    let z = Array::from_slice(&vec![-0.0f32; 3 * 700], &[3, 700])?;
    let one = Array::from_slice(&[1.0f32], &[])?;
    let s = compile(|z: &Array, o: &Array| (z * o)?.sum(-1, false)).call((&z, &one))?;
    assert!(s.to_vec::<f32>()?.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()), "{s}");
    Ok(())
}

/// A compiled `sum(x * y)` folds its rows in the order eager `sum` folds
/// the materialized `x * y` (pairwise halves, leaves of 64 lanes), so the
/// two agree bit for bit: rows within a tile, rows made leaf by leaf (longer
/// than a tile, lengths that do not split evenly), rows split among
/// threads, and a whole-array sum.
#[test]
fn compiled_fused_sums_equal_eager_sums_bit_for_bit() -> Result<()> {
    let mut rng = Rng::new(5);
    let rows = compile(|x: &Array, y: &Array| (x * y)?.sum(-1, false));
    let all = compile(|x: &Array, y: &Array| (x * y)?.sum(kiln::Axes::All, false));
    for (r, c) in
        [(7, 300), (3, TILE - 64), (4, TILE + 100), (2, 3 * TILE + 7), (1, 5000), (613, 129), (19, 3 * TILE + 7)]
    {
        let x = Array::from_slice(&rng.floats_f32(r * c, -3.0, 3.0), &[r, c])?;
        let y = Array::from_slice(&rng.floats_f32(r * c, -3.0, 3.0), &[r, c])?;
        let eager_rows = (&x * &y)?.sum(-1, false)?.to_vec::<f32>()?;
        let eager_all = (&x * &y)?.sum(kiln::Axes::All, false)?.to_vec::<f32>()?;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&rows.call((&x, &y))?.to_vec::<f32>()?), bits(&eager_rows), "{r}x{c} rows");
        assert_eq!(bits(&all.call((&x, &y))?.to_vec::<f32>()?), bits(&eager_all), "{r}x{c} all");
    }
    Ok(())
}

/// Row-major values of `vals` (of `shape`) permuted by `perm`.
fn permuted<T: Copy>(vals: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let nd = shape.len();
    let mut strides = vec![1usize; nd];
    for d in (0..nd - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    (0..vals.len())
        .map(|mut i| {
            let mut off = 0;
            for d in (0..nd).rev() {
                off += (i % out[d]) * strides[perm[d]];
                i /= out[d];
            }
            vals[off]
        })
        .collect()
}

#[test]
fn inputs_read_across_their_layout_run_in_blocks_with_every_value_in_place() -> Result<()> {
    use kiln::backend::cpu::blocked;
    use kiln::ops::shape::slice_axis;
    use kiln::DType;
    // Transposes and permutations whose sizes are not multiples of a
    // block (nor of the 8x8 squares copied in vector registers), with
    // the densest dimension of the permuted input outermost or in the middle.
    let cases: [(&[usize], &[usize]); 8] = [
        (&[257, 129], &[1, 0]),
        (&[5, 4096], &[1, 0]),
        (&[4096, 5], &[1, 0]),
        (&[301, 300], &[1, 0]),
        (&[6, 40, 130], &[0, 2, 1]),
        (&[20, 30, 40], &[2, 1, 0]),
        (&[33, 17, 65], &[1, 2, 0]),
        (&[3, 64, 96], &[2, 0, 1]),
    ];
    let before = blocked::runs();
    for (shape, perm) in cases {
        let n: usize = shape.iter().product();
        let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        // Integers, so that every dtype computes them exactly.
        let xs: Vec<f64> = (0..n).map(|i| ((i * 7919) % 2039) as f64 - 1000.0).collect();
        let ys: Vec<f64> = (0..n).map(|i| ((i * 104_729) % 997) as f64 - 500.0).collect();
        let xp = permuted(&xs, shape, perm);
        let want: Vec<f64> = xp.iter().zip(&ys).map(|(a, b)| (a - b) + a * b).collect();
        let p: Vec<isize> = perm.iter().map(|&d| d as isize).collect();
        let f = |x: &Array, y: &Array| -> Result<Array> {
            let xp = x.permute(&p)?;
            (&xp - y)? + (&xp * y)?
        };
        let compiled = compile(f);
        for dt in [DType::F32, DType::F64, DType::I32] {
            let x = Array::from_vec(xs.clone(), shape)?.astype(dt)?;
            let y = Array::from_vec(ys.clone(), &out)?.astype(dt)?;
            for (how, got) in [("compiled", compiled.call((&x, &y))?), ("eager", f(&x, &y)?)] {
                assert_eq!(got.shape(), &out[..]);
                let got = values_f64(&got);
                let bad = got.iter().zip(&want).position(|(g, w)| g != w);
                assert!(bad.is_none(), "{how} {dt} {shape:?} by {perm:?}: position {bad:?}");
            }
        }
    }
    // Reversed and transposed, with a per-row value broadcast along the rows.
    let (r, c) = (300usize, 257usize);
    let xs: Vec<f32> = (0..r * c).map(|i| ((i * 31) % 1001) as f32 - 500.0).collect();
    let col: Vec<f32> = (0..r).map(|i| i as f32 * 3.0 - 7.0).collect();
    let x = Array::from_slice(&xs, &[c, r])?;
    let cv = Array::from_slice(&col, &[r, 1])?;
    let g = |x: &Array, cv: &Array| -> Result<Array> { (&slice_axis(&x.t()?, 0, None, None, -1)? * cv)? - cv };
    for (how, got) in [("compiled", compile(g).call((&x, &cv))?), ("eager", g(&x, &cv)?)] {
        let got = got.to_vec::<f32>()?;
        for i in 0..r {
            for j in 0..c {
                let (v, k) = (xs[j * r + (r - 1 - i)], col[i]);
                assert_eq!(got[i * c + j], v * k - k, "{how}: ({i}, {j})");
            }
        }
    }
    assert!(blocked::runs() > before, "no launch ran in blocks");
    Ok(())
}

#[test]
fn inputs_read_every_kth_element_give_every_value() -> Result<()> {
    use kiln::ops::shape::slice_axis;
    use kiln::DType;
    // Steps along the innermost axis of 2 to 17 elements (read 16 at a time
    // by vector gathers where the CPU has them), runs off the 16 grid, from
    // an offset; both elementwise paths, every element width.
    let (r, c) = (37usize, 1203usize);
    let xs: Vec<f64> = (0..r * c).map(|i| ((i * 7919) % 4001) as f64 - 2000.0).collect();
    for step in [2usize, 3, 7, 16, 17] {
        let start = 5usize;
        let cols = (c - start).div_ceil(step);
        let want: Vec<f64> = (0..r)
            .flat_map(|i| (0..cols).map(move |j| (i, start + j * step)))
            .map(|(i, j)| xs[i * c + j] * 3.0 - 1.0)
            .collect();
        let f = move |x: &Array| -> Result<Array> {
            let v = slice_axis(x, 1, Some(start as isize), None, step as isize)?;
            (&v * 3.0f32)? - 1.0f32
        };
        for dt in [DType::F32, DType::F64, DType::I32, DType::BF16] {
            let x = Array::from_vec(xs.clone(), &[r, c])?.astype(dt)?;
            for (how, got) in [("compiled", compile(f).call(&x)?), ("eager", f(&x)?)] {
                assert_eq!(got.shape(), &[r, cols]);
                let got = values_f64(&got);
                // bf16 holds these integers to 8 significant bits.
                let tol = if dt == DType::BF16 { 2e-2 } else { 0.0 };
                let bad = got.iter().zip(&want).position(|(g, w)| (g - w).abs() > tol * w.abs());
                assert!(bad.is_none(), "{how} {dt} step {step}: position {bad:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn copies_of_permuted_layouts_run_in_blocks_with_every_value_in_place() -> Result<()> {
    use kiln::DType;
    // A reshape that cannot be a view copies its input in row-major order
    // (strided::gather); read across the layout, it copies in blocks.
    let cases: [(&[usize], &[usize]); 4] =
        [(&[257, 129], &[1, 0]), (&[5, 4096], &[1, 0]), (&[6, 40, 130], &[0, 2, 1]), (&[33, 17, 65], &[1, 2, 0])];
    for (shape, perm) in cases {
        let n: usize = shape.iter().product();
        let xs: Vec<f64> = (0..n).map(|i| ((i * 7919) % 2039) as f64 - 1000.0).collect();
        let p: Vec<isize> = perm.iter().map(|&d| d as isize).collect();
        let f = |x: &Array| -> Result<Array> { x.permute(&p)?.reshape(&[-1]) };
        for dt in [DType::F32, DType::F64, DType::I32, DType::BF16, DType::U8] {
            let x = Array::from_vec(xs.clone(), shape)?.astype(dt)?;
            let held = values_f64(&x);
            let want: Vec<f64> = permuted(&held, shape, perm);
            for (how, got) in [("compiled", compile(f).call(&x)?), ("eager", f(&x)?)] {
                assert_eq!(got.shape(), &[n]);
                assert!(values_f64(&got) == want, "{how} {dt} {shape:?} by {perm:?}");
            }
        }
    }
    Ok(())
}

/// Fused reductions over leading or middle axes (`sum(exp(x), 0)`, a mean
/// over the middle axis of `(b, s, h)`) run in the group's own row-major
/// order (`fused_reduce::fold_columns`): one strip of tiles, several
/// strips, a batch, two middle axes, row counts that are not multiples of
/// the chunks, below and above the parallel threshold; against `f64`
/// loops over the same `f32` values, and against eager.
#[test]
fn fused_reductions_over_leading_and_middle_axes() -> Result<()> {
    use kiln::backend::cpu::fused_reduce::column_runs;
    let cases: &[(&[usize], &[isize])] = &[
        (&[3, 5], &[0]),
        (&[300, 2500], &[0]),
        (&[37, 9000], &[0]),
        (&[5, 70, 33], &[1]),
        (&[6, 4, 50, 17], &[1, 2]),
        (&[1030, 70], &[0]),
    ];
    let mut rng = Rng::new(17);
    for &(shape, axes) in cases {
        let n: usize = shape.iter().product();
        let vals = rng.floats_f32(n, -2.0, 2.0);
        let x = Array::from_slice(&vals, shape)?;
        // The group's value, as kiln computes it in f32 (exp is within
        // an ulp or two of the f64 one).
        let made: Vec<f64> = vals.iter().map(|&v| ((v as f64).exp() * 0.5 - v as f64) as f32 as f64).collect();
        let first = axes[0] as usize;
        let last = *axes.last().expect("an axis") as usize;
        let nb: usize = shape[..first].iter().product();
        let nr: usize = shape[first..=last].iter().product();
        let nk: usize = shape[last + 1..].iter().product();
        type Red = fn(&Array, &[isize]) -> Result<Array>;
        let ops: [(&str, Red); 4] = [
            ("sum", |a, ax| a.sum(ax, false)),
            ("mean", |a, ax| a.mean(ax, false)),
            ("max", |a, ax| a.max(ax, false)),
            ("min", |a, ax| a.min(ax, false)),
        ];
        for (name, red) in ops {
            let f = move |x: &Array| red(&((x.exp()? * 0.5f32)? - x)?, axes);
            let before = column_runs();
            let got = compile(f).call(&x)?.to_vec::<f32>()?;
            assert!(column_runs() > before, "{name} over {axes:?} of {shape:?} did not fold columns");
            let eager = f(&x)?.to_vec::<f32>()?;
            assert_eq!(got.len(), nb * nk);
            for o in 0..nb * nk {
                let (b, k) = (o / nk, o % nk);
                let col = (0..nr).map(|r| made[(b * nr + r) * nk + k]);
                let (want, scale) = match name {
                    "sum" => (col.clone().sum::<f64>(), col.map(f64::abs).sum::<f64>()),
                    "mean" => (col.clone().sum::<f64>() / nr as f64, col.map(f64::abs).sum::<f64>() / nr as f64),
                    "max" => (col.fold(f64::NEG_INFINITY, f64::max), 0.0),
                    _ => (col.fold(f64::INFINITY, f64::min), 0.0),
                };
                let g = got[o] as f64;
                let tol = 1e-5 * scale.max(want.abs()) + 1e-6;
                assert!((g - want).abs() <= tol, "{name} {shape:?} {axes:?} output {o}: {g} vs {want}");
                let e = eager[o] as f64;
                assert!((g - e).abs() <= tol, "{name} {shape:?} {axes:?} output {o}: compiled {g}, eager {e}");
            }
        }
    }
    Ok(())
}

/// Special values through the column fold: a NaN makes its column's sum
/// and extrema NaN, an infinity its sum infinite, and a sum of negative
/// zeros stays negative, as eager reductions give them.
#[test]
fn fused_column_reductions_keep_special_values() -> Result<()> {
    let (r, c) = (600, 40);
    let mut vals: Vec<f32> = (0..r * c).map(|i| -1.0 - (i % 7) as f32).collect();
    vals[17 * c + 3] = f32::NAN;
    vals[500 * c + 5] = f32::INFINITY;
    let x = Array::from_slice(&vals, &[r, c])?;
    let sum = compile(|x: &Array| (x * 2.0f32)?.sum(0, false)).call(&x)?.to_vec::<f32>()?;
    let max = compile(|x: &Array| (x * 2.0f32)?.max(0, false)).call(&x)?.to_vec::<f32>()?;
    let min = compile(|x: &Array| (x * 2.0f32)?.min(0, false)).call(&x)?.to_vec::<f32>()?;
    assert!(sum[3].is_nan() && max[3].is_nan() && min[3].is_nan(), "NaN column: {} {} {}", sum[3], max[3], min[3]);
    assert_eq!((sum[5], max[5], min[5]), (f32::INFINITY, f32::INFINITY, -14.0));
    assert!(sum[0].is_finite() && max[0] == -2.0 && min[0] == -14.0);
    // x * 0 of negative x: every value -0, and so is their sum.
    let zeros =
        compile(|x: &Array| (x * 0.0f32)?.sum(0, false)).call(&Array::from_slice(&vals[..c * 50], &[50, c])?)?;
    let z = zeros.to_vec::<f32>()?;
    assert!(z.iter().enumerate().filter(|&(k, _)| k != 3 && k != 5).all(|(_, v)| *v == 0.0 && v.is_sign_negative()));
    Ok(())
}

/// Fused reductions over axes that are not innermost whose ops the column
/// fold does not take (a variance, a product, a log-sum-exp, softmax's
/// statistics of a computed value, `i32` sums, two axes around a kept
/// one) make the group's values whole in their own order and reduce them
/// as eager does: compiled gives eager's result bit for bit (softmax's
/// statistics too; its normalizing step within the stated 1e-5).
#[test]
fn other_fused_reductions_over_leading_axes_give_eager_bits() -> Result<()> {
    use kiln::backend::cpu::fused_reduce::whole_runs;
    let (r, c) = (300, 257);
    let mut rng = Rng::new(29);
    let x = Array::from_slice(&rng.floats_f32(r * c, -2.0, 2.0), &[r, c])?;
    type F = fn(&Array) -> Result<Array>;
    let cases: [(&str, F); 7] = [
        ("var", |x| x.maximum(0.0f32)?.var(0, false, 1)),
        ("prod", |x| ((x * 0.01f32)? + 1.0f32)?.prod(0, false)),
        ("logsumexp", |x| (x * 2.0f32)?.logsumexp(0, false)),
        ("softmax", |x| (x * 2.0f32)?.softmax(0)),
        ("i32 sum", |x| (x * 10.0f32)?.astype(kiln::DType::I32)?.sum(0, false)),
        ("sum over (0, 2)", |x| (x.reshape(&[20, 15, 257])? * 2.0f32)?.sum(&[0isize, 2][..], false)),
        ("mean of (0, 2) kept", |x| (x.reshape(&[20, 15, 257])? * 2.0f32)?.mean(&[0isize, 2][..], true)),
    ];
    for (name, f) in cases {
        let before = whole_runs();
        let got = compile(f).call(&x)?;
        assert!(whole_runs() > before, "{name}: the values were not made whole");
        let want = f(&x)?;
        assert_eq!(got.shape(), want.shape(), "{name}");
        let (g, w) = (got.astype(kiln::DType::F64)?.to_vec::<f64>()?, want.astype(kiln::DType::F64)?.to_vec::<f64>()?);
        let tol = if name == "softmax" { 1e-5 } else { 0.0 };
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * b.abs();
            assert!(same, "{name} [{i}]: {a} vs eager {b}");
        }
    }
    Ok(())
}

/// The elements of row-major `vals` of `shape` grouped by their position
/// in the kept axes (row-major), reducing `axes`.
fn reduce_groups(vals: &[f64], shape: &[usize], axes: &[usize]) -> Vec<Vec<f64>> {
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let n_out: usize = kept.iter().map(|&a| shape[a]).product();
    let mut out = vec![vec![]; n_out];
    for (i, &v) in vals.iter().enumerate() {
        let (mut rem, mut idx) = (i, vec![0; shape.len()]);
        for d in (0..shape.len()).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        let key = kept.iter().fold(0, |k, &a| k * shape[a] + idx[a]);
        out[key].push(v);
    }
    out
}

/// Fused reductions of a permuted input run their space in the input's
/// memory order (`reduce::MemoryOrder`): `sum(x.t() * 2, -1)` folds the
/// columns of `x`, a reduction of a permuted cube folds its planes in
/// order, and the results come back in the output's order. Sums, means,
/// maxima (the column fold), a variance (values made whole), a broadcast
/// second input, against `f64` loops and against eager.
#[test]
fn fused_reductions_of_permuted_inputs_run_in_memory_order() -> Result<()> {
    use kiln::backend::cpu::reduce::reordered_runs;
    let cases: &[(&[usize], &[usize], &[isize])] = &[
        (&[300, 257], &[1, 0], &[-1]),
        (&[20, 30, 40], &[2, 0, 1], &[-1]),
        (&[20, 30, 40], &[2, 0, 1], &[0]),
        (&[9, 11, 600], &[1, 2, 0], &[0, 2]),
    ];
    let mut rng = Rng::new(41);
    for &(shape, perm, axes) in cases {
        let n: usize = shape.iter().product();
        let vals = rng.floats_f32(n, -2.0, 2.0);
        let x = Array::from_slice(&vals, shape)?;
        let p: Vec<isize> = perm.iter().map(|&d| d as isize).collect();
        let ps: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
        let last = *ps.last().expect("an axis");
        let bias: Vec<f32> = (0..last).map(|i| (i % 5) as f32 * 0.25).collect();
        let b = Array::from_slice(&bias, &[last])?;
        let pv: Vec<f32> = permuted(&vals, shape, perm);
        // The group's value, in f32 as kiln computes it.
        let made: Vec<f64> = pv
            .iter()
            .enumerate()
            .map(|(i, &v)| ((v as f64).exp() * 0.5 - v as f64 + bias[i % last] as f64) as f32 as f64)
            .collect();
        let ax: Vec<usize> =
            axes.iter().map(|&a| if a < 0 { (ps.len() as isize + a) as usize } else { a as usize }).collect();
        let groups = reduce_groups(&made, &ps, &ax);
        type Red = fn(&Array, &[isize]) -> Result<Array>;
        let ops: [(&str, Red); 4] = [
            ("sum", |a, ax| a.sum(ax, false)),
            ("mean", |a, ax| a.mean(ax, false)),
            ("max", |a, ax| a.max(ax, false)),
            ("var", |a, ax| a.var(ax, false, 0)),
        ];
        for (name, red) in ops {
            let (p, ax) = (p.clone(), axes.to_vec());
            let f = move |x: &Array, b: &Array| red(&(((x.permute(&p)?.exp()? * 0.5f32)? - x.permute(&p)?)? + b)?, &ax);
            let before = reordered_runs();
            let got = compile(f.clone()).call((&x, &b))?.to_vec::<f32>()?;
            assert!(reordered_runs() > before, "{name} over {axes:?} of {shape:?} by {perm:?} kept the space's order");
            let eager = f(&x, &b)?.to_vec::<f32>()?;
            assert_eq!(got.len(), groups.len());
            for (o, g) in groups.iter().enumerate() {
                let k = g.len() as f64;
                let mean = g.iter().sum::<f64>() / k;
                let (want, scale) = match name {
                    "sum" => (g.iter().sum::<f64>(), g.iter().map(|v| v.abs()).sum::<f64>()),
                    "mean" => (mean, g.iter().map(|v| v.abs()).sum::<f64>() / k),
                    "max" => (g.iter().copied().fold(f64::NEG_INFINITY, f64::max), 0.0),
                    _ => (g.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k, mean * mean),
                };
                let tol = 1e-5 * scale.max(want.abs()) + 1e-6;
                let (c, e) = (got[o] as f64, eager[o] as f64);
                assert!(
                    (c - want).abs() <= tol,
                    "{name} {shape:?} by {perm:?} over {axes:?} output {o}: {c} vs {want}"
                );
                assert!(
                    (c - e).abs() <= tol,
                    "{name} {shape:?} by {perm:?} over {axes:?} output {o}: compiled {c}, eager {e}"
                );
            }
        }
    }
    Ok(())
}

/// A chain of row kernels (softmax, layernorm) over a transposed input
/// copies each block's rows once, in order, and every kernel reads the
/// copy; over a permuted cube, where a block of rows is narrower than a
/// cache line, the kernels run one by one. Compiled equals eager.
#[test]
fn row_chains_over_transposed_inputs() -> Result<()> {
    let mut rng = Rng::new(43);
    for (shape, perm) in [(vec![700usize, 300], vec![1isize, 0]), (vec![64, 48, 40], vec![2, 0, 1])] {
        let n: usize = shape.iter().product();
        let x = Array::from_slice(&rng.floats_f32(n, -3.0, 3.0), &shape)?;
        let softmax = |x: &Array, p: &[isize]| x.permute(p)?.softmax(-1);
        let layernorm = |x: &Array, p: &[isize]| -> Result<Array> {
            let v = x.permute(p)?;
            let c = (&v - &v.mean(-1, true)?)?;
            &c / &((&c * &c)?.mean(-1, true)? + 1e-5f32)?.sqrt()?
        };
        for (name, f) in
            [("softmax", &softmax as &dyn Fn(&Array, &[isize]) -> Result<Array>), ("layernorm", &layernorm)]
        {
            let p = perm.clone();
            let got = compile(|x: &Array| f(x, &p)).call(&x)?;
            let want = f(&x, &perm)?;
            assert_eq!(got.shape(), want.shape());
            for (i, (a, b)) in got.to_vec::<f32>()?.iter().zip(&want.to_vec::<f32>()?).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{name} {shape:?} by {perm:?} [{i}]: {a} vs eager {b}"
                );
            }
        }
    }
    Ok(())
}

/// Fused kernels over columns taken every `step` (steps 2 to 8 read whole
/// vectors and permute them, longer ones gather, negative ones read the
/// run forwards and reverse it), `f32`, `i32` and `f64`, compiled and
/// eager, against indexing.
#[test]
fn fused_kernels_over_stepped_columns() -> Result<()> {
    let (r, c) = (37, 1000);
    let vals: Vec<f64> = (0..r * c).map(|i| ((i * 7919) % 2039) as f64 - 1000.0).collect();
    for dt in [kiln::DType::F32, kiln::DType::I32, kiln::DType::F64] {
        let x = Array::from_vec(vals.clone(), &[r, c])?.astype(dt)?;
        for step in [2isize, 3, 5, 8, 9, 17, -1, -2, -3, -8] {
            let f = move |x: &Array| -> Result<Array> { (kiln::slice_axis(x, 1, None, None, step)? * 3)? - 1 };
            let cols: Vec<usize> = if step > 0 {
                (0..c).step_by(step as usize).collect()
            } else {
                (0..c).rev().step_by(-step as usize).collect()
            };
            let want: Vec<f64> = (0..r)
                .flat_map(|i| cols.iter().map(move |&j| (i, j)))
                .map(|(i, j)| vals[i * c + j] * 3.0 - 1.0)
                .collect();
            for (how, got) in [("compiled", compile(f).call(&x)?), ("eager", f(&x)?)] {
                assert_eq!(got.shape(), &[r, cols.len()], "{how} {dt} step {step}");
                assert!(values_f64(&got) == want, "{how} {dt} step {step}");
            }
        }
    }
    Ok(())
}

/// A short row broadcast over every other dimension (`x - m` with `m` of
/// 3, 5 or 16 elements, an NHWC bias) is one period repeated through each
/// tile, from any phase: compiled and eager, `f32` and `i32`, against
/// indexing.
#[test]
fn short_rows_broadcast_over_long_arrays() -> Result<()> {
    for (rows, p) in [(9000usize, 3usize), (4010, 5), (3000, 16), (700, 3)] {
        let xs: Vec<f64> = (0..rows * p).map(|i| ((i * 7919) % 2039) as f64 - 1000.0).collect();
        let ms: Vec<f64> = (0..p).map(|j| (j * 37) as f64 - 50.0).collect();
        for dt in [kiln::DType::F32, kiln::DType::I32] {
            let x = Array::from_vec(xs.clone(), &[rows / 10, 10, p])?.astype(dt)?;
            let m = Array::from_vec(ms.clone(), &[p])?.astype(dt)?;
            let n = x.shape().iter().product::<usize>();
            let want: Vec<f64> = (0..n).map(|i| xs[i] - ms[i % p]).collect();
            let f = |x: &Array, m: &Array| -> Result<Array> { x - m };
            for (how, got) in [("compiled", compile(f).call((&x, &m))?), ("eager", f(&x, &m)?)] {
                assert!(values_f64(&got) == want, "{how} {dt} rows {rows} period {p}");
            }
        }
    }
    Ok(())
}

/// A fused reduction whose inputs are read across their layout in any
/// order (`sum(x + x.t(), -1)`) makes its values whole block by block and
/// reduces them as eager does: eager's bits.
#[test]
fn fused_reductions_of_transposed_and_plain_inputs_give_eager_bits() -> Result<()> {
    use kiln::backend::cpu::fused_reduce::whole_runs;
    let mut rng = Rng::new(47);
    let n = 300;
    let x = Array::from_slice(&rng.floats_f32(n * n, -2.0, 2.0), &[n, n])?;
    type F = fn(&Array) -> Result<Array>;
    let cases: [(&str, F); 3] = [
        ("sum", |x| (x + &x.t()?)?.sum(-1, false)),
        ("max", |x| (x * &x.t()?)?.max(-1, true)),
        ("mean", |x| (x - &x.t()?)?.exp()?.mean(-1, false)),
    ];
    for (name, f) in cases {
        let before = whole_runs();
        let got = compile(f).call(&x)?;
        assert!(whole_runs() > before, "{name}: the values were not made whole");
        let want = f(&x)?;
        assert_eq!(got.shape(), want.shape());
        let (g, w) = (got.to_vec::<f32>()?, want.to_vec::<f32>()?);
        assert!(g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: compiled differs from eager");
    }
    Ok(())
}
