//! Compile time against program size, phase by phase (issue 14 §5).
//!
//! For each variant and each `n` (the number of ops in the traced
//! function), traces the function, then times every phase of compiling it
//! on its own: tracing (building the graph on placeholders), capture
//! (`Program::from_graph`), each optimization pass (the `dce` column sums
//! the dead-code removals the pipeline runs after other passes), fusion
//! planning, lowering (`Backend::lower`: planning again, lifetimes, row
//! chains) and
//! the first run of the executable. Then, separately, the whole first call
//! of `kiln::compile(f)` (what a user waits for), and the eager run of the
//! same function; it checks that the compiled result equals the eager one.
//!
//! Variants:
//! - `chain`: `y = y * 0.999` and `y = y + 0.001`, alternately (every op
//!   reads a fresh scalar constant: CSE merges them all);
//! - `wide`: `n / 3` branches `sin(x * c_k)` summed one by one (`x` has
//!   `n / 3` readers);
//! - `repeat`: `y = (sin(y) + sin(y)) * 0.5` (CSE merges every second
//!   `sin`);
//! - `reduce`: on a (64, 256) array, seven elementwise ops then
//!   `y - mean(y, -1)` or `y - max(y, -1)`, alternately (many fused groups,
//!   reduction kernels and row chains).
//!
//! Run: `cargo run --release -p kiln --example compile_time [variants [sizes]]`,
//! e.g. `... compile_time chain,wide 1000,4000,16000`. Defaults: every
//! variant; 1000, 4000, 16000, 32000, 100000.

use std::cell::RefCell;
use std::time::Instant;

use kiln::backend::cpu::Cpu;
use kiln::backend::Backend;
use kiln::passes;
use kiln::program::Program;
use kiln::{compile, Array, DType, Result};

/// Builds the variant's function of `x` with about `n` ops.
fn build(variant: &str, x: &Array, n: usize) -> Result<Array> {
    let mut y = x.clone();
    match variant {
        "chain" => {
            for i in 0..n {
                y = if i % 2 == 0 { (&y * 0.999f32)? } else { (&y + 0.001f32)? };
            }
        }
        "wide" => {
            let mut acc: Option<Array> = None;
            for k in 0..n / 3 {
                let b = (x * (1.0f32 + k as f32 * 1e-4))?.sin()?;
                acc = Some(match acc {
                    Some(a) => (&a + &b)?,
                    None => b,
                });
            }
            y = acc.unwrap_or(y);
        }
        "repeat" => {
            for _ in 0..n / 4 {
                y = ((y.sin()? + y.sin()?)? * 0.5f32)?;
            }
        }
        "reduce" => {
            for i in 0..n {
                y = match i % 8 {
                    7 if i % 16 == 7 => (&y - &y.mean(-1, true)?)?,
                    7 => (&y - &y.max(-1, true)?)?,
                    k if k % 2 == 0 => (&y * 0.999f32)?,
                    _ => (&y + 0.001f32)?,
                };
            }
        }
        other => return Err(kiln::Error::Invalid { op: "compile_time", msg: format!("unknown variant {other}") }),
    }
    Ok(y)
}

fn input(variant: &str) -> Result<Array> {
    let shape: &[usize] = if variant == "reduce" { &[64, 256] } else { &[1024] };
    let x = kiln::random::uniform(-1.0, 1.0, shape, DType::F32, None)?;
    x.eval()?;
    Ok(x)
}

/// Seconds since `t`.
fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let variants: Vec<String> = args
        .get(1)
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_else(|| ["chain", "wide", "repeat", "reduce"].map(String::from).to_vec());
    let sizes: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 4000, 16000, 32000, 100000]);
    kiln::random::seed(0);
    println!(
        "{:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
        "variant",
        "n",
        "instrs",
        "trace",
        "capture",
        "simpl",
        "cse",
        "stats",
        "dce",
        "remat",
        "plan",
        "lower",
        "run1",
        "compile",
        "eager",
        "drop"
    );
    for variant in &variants {
        for &n in &sizes {
            let x = input(variant)?;
            let xd = x.data().expect("evaluated").clone();
            // Phase by phase, inside a trace (the closure gets placeholders).
            let times: RefCell<Vec<f64>> = RefCell::new(vec![]);
            let instrs = RefCell::new(0usize);
            let probe = compile(|p: &Array| -> Result<Array> {
                let mut t = times.borrow_mut();
                let t0 = Instant::now();
                let out = build(variant, p, n)?;
                t.push(secs(t0));
                let t0 = Instant::now();
                let mut prog = Program::from_graph(std::slice::from_ref(p), std::slice::from_ref(&out))?;
                t.push(secs(t0));
                *instrs.borrow_mut() = prog.instrs.len();
                // One column per pass name, in the order of the table.
                let columns = ["simplify", "cse", "statistics", "dce", "remat"];
                let mut pass_times = [0.0; 5];
                for pass in passes::pipeline(false) {
                    let t0 = Instant::now();
                    pass.run(&mut prog, Cpu.facts());
                    let col = columns.iter().position(|&c| c == pass.name()).expect("a column per pass");
                    pass_times[col] += secs(t0);
                }
                t.extend(pass_times);
                let t0 = Instant::now();
                let planned = passes::fuse::plan(&prog, Cpu.facts());
                t.push(secs(t0));
                drop(planned);
                let t0 = Instant::now();
                let exe = Cpu.lower(prog)?;
                t.push(secs(t0));
                let t0 = Instant::now();
                exe.run(&[&xd], None)?;
                t.push(secs(t0));
                Ok(out)
            });
            // Only the probe's own timings matter; its compile is not timed.
            probe.call(&x)?;
            drop(probe);
            // The whole first call, as a user sees it.
            let f = compile(|p: &Array| build(variant, p, n));
            let t0 = Instant::now();
            let got = f.call(&x)?;
            let total = secs(t0);
            let t0 = Instant::now();
            let want = build(variant, &x, n)?;
            want.eval()?;
            let eager = secs(t0);
            let same = got.to_vec::<f32>()? == want.to_vec::<f32>()?;
            // Dropping a deep lazy graph (built, not evaluated).
            let lazy = build(variant, &x, n)?;
            let t0 = Instant::now();
            drop(lazy);
            let dropped = secs(t0);
            let t = times.borrow();
            print!("{variant:<7} {n:>7} {:>7}", instrs.borrow());
            for v in t.iter() {
                print!(" {v:>7.3}");
            }
            println!(" {total:>8.3} {eager:>7.3} {dropped:>7.3}{}", if same { "" } else { "  MISMATCH" });
        }
    }
    Ok(())
}
