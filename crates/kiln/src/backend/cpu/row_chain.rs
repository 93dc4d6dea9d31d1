//! Row-chunked execution: a chain of consecutive fused kernels whose work
//! is independent from one block of leading rows to the next (elementwise
//! groups, and reductions, fused or not, that keep the leading axis) runs block by block,
//! each block through every kernel of the chain while its rows are in cache.
//! Softmax and layernorm thus read their input from memory once: the
//! statistics kernel brings a block of rows into cache and the output
//! kernel reads them from there. Values used only inside the chain never
//! exist at full size; values used after it are written block by block
//! into full-size buffers. Blocks run in parallel on the
//! [`team`].
//!
//! Whether a chain applies is decided per call from the run-time shapes:
//! every kernel iterates over the same number of leading rows `R`, and each
//! input either has those rows (and is cut per block) or spans no rows (a
//! lower-rank or size-1 leading axis, read whole by every block).
//!
//! An outside input whose rows spread across memory (a transposed matrix:
//! a block of its rows is a band of columns) is copied once per block into
//! row-major order, and every kernel of the block reads the copy; read in
//! place, each kernel read one element per cache line (a softmax over the
//! rows of `x.t()` ran four to five times slower than with the copy). Where a block is
//! narrower than a cache line, that copy would read whole lines for a few
//! elements each, and the chain runs kernel by kernel instead.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::array::Data;
use crate::backend::cpu::executable::{run_step, CpuExecutable, Step};
use crate::backend::cpu::fused::{self, Arg};
use crate::backend::cpu::rows::{Claimed, RowSink};
use crate::backend::cpu::team;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::passes::fuse::Kernel;
use crate::primitive::Primitive;
use crate::program::Program;

/// Elements (of the widest kernel) per block: a block's values, and the
/// next block's input rows being prefetched, stay in L2 (larger blocks
/// spill it; smaller ones were measured no faster: see the commit history
/// and bench/README.md).
const BLOCK_ELEMS: usize = 1 << 16;

/// Bytes of a cache line.
const LINE: usize = 64;

/// Below this many elements a chain runs kernel by kernel.
const MIN_ELEMS: usize = 1 << 16;

/// A run of steps that may run row block by row block.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The steps.
    pub steps: Range<usize>,
    /// Values the chain writes that are read after it (or are outputs).
    pub escapes: Vec<usize>,
    /// Per escaping value: no step of the chain reads it, so its kernel
    /// writes it straight into its full-size buffer.
    pub write_through: Vec<bool>,
    /// The row kernel's plan of the last call.
    pub plans: crate::backend::cpu::row_kernel::PlanCache,
}

/// Maximal runs of at least two consecutive fused (elementwise or
/// reduction) steps; a reduction over the leading axis never splits into
/// blocks of rows, so it ends a run (and is left out of it).
pub fn find(p: &Program, steps: &[Step]) -> Vec<Chain> {
    let chainable = |s: &Step| match &s.kernel {
        Kernel::Fused(_) => true,
        Kernel::ReduceFused { axes, .. } | Kernel::Single(Primitive::Reduce { axes, .. }) => !axes.contains(&0),
        _ => false,
    };
    let n = p.instrs.len();
    // The last step reading each value, and whether it is an output.
    let mut last_read = vec![0usize; n];
    let mut is_output = vec![false; n];
    for (k, st) in steps.iter().enumerate() {
        for &v in &st.inputs {
            last_read[v] = k;
        }
    }
    for &o in &p.outputs {
        is_output[o] = true;
    }
    // Marks values read by the chain being looked at (set, then cleared).
    let mut read_here = vec![false; n];
    let mut chains = vec![];
    let mut s = 0;
    while s < steps.len() {
        let start = s;
        while s < steps.len() && chainable(&steps[s]) {
            s += 1;
        }
        if s - start >= 2 {
            let escapes: Vec<usize> = steps[start..s]
                .iter()
                .flat_map(|st| st.outputs.iter().copied())
                .filter(|&v| is_output[v] || last_read[v] >= s)
                .collect();
            for &v in steps[start..s].iter().flat_map(|st| st.inputs.iter()) {
                read_here[v] = true;
            }
            let write_through = escapes.iter().map(|&v| !read_here[v]).collect();
            for &v in steps[start..s].iter().flat_map(|st| st.inputs.iter()) {
                read_here[v] = false;
            }
            chains.push(Chain { steps: start..s, escapes, write_through, plans: Default::default() });
        }
        s = s.max(start + 1);
    }
    chains
}

/// Rows per block when `rows` rows of `widest` elements run block by
/// block; `None` when they run kernel by kernel (too few elements or rows).
fn block_rows(rows: usize, widest: usize) -> Option<usize> {
    let block = (BLOCK_ELEMS / widest.max(1)).max(1);
    (rows.saturating_mul(widest) >= MIN_ELEMS && rows.div_ceil(block) >= 2).then_some(block)
}

/// True when a chain iterating over `shape` runs block of rows by block of
/// rows (the passes ask this of the traced shapes through
/// [`Facts::splits_rows`](crate::passes::Facts::splits_rows), see
/// [`remat`](crate::passes::remat)).
pub fn splits(shape: &[usize]) -> bool {
    shape.len() >= 2 && block_rows(shape[0], shape[1..].iter().product()).is_some()
}

/// The iteration space of a step at the call's shapes: its source's shape
/// for a reduction, else its output's.
pub(crate) fn space<'a, S: AsRef<[usize]> + ?Sized + 'a>(st: &Step, shape_of: &impl Fn(usize) -> &'a S) -> &'a [usize] {
    match &st.kernel {
        Kernel::ReduceFused { source, .. } => shape_of(*source).as_ref(),
        Kernel::Single(Primitive::Reduce { .. }) => shape_of(st.inputs[0]).as_ref(),
        _ => shape_of(st.outputs[0]).as_ref(),
    }
}

/// How a block reads one input of one step.
enum Cut {
    /// Rows of a value computed in the block.
    Local,
    /// The block's rows of an outside value.
    Rows,
    /// The whole outside value.
    Whole,
}

/// Runs `chain` block by block if the run-time shapes allow it, storing the
/// escaping values in `values`; `Ok(false)` means it did not apply.
pub fn run<'a, S: AsRef<[usize]> + ?Sized + 'a>(
    exe: &CpuExecutable,
    chain: &Chain,
    values: &mut [Option<Data>],
    shape_of: &(impl Fn(usize) -> &'a S + Sync),
) -> Result<bool> {
    let p = &exe.program;
    let steps = &exe.steps[chain.steps.clone()];
    let Some(rows) = space(&steps[0], shape_of).first().copied() else { return Ok(false) };
    // Values the chain writes, and where each escaping value's sink is
    // (hash maps: a chain may have many steps).
    let produced: HashSet<usize> = steps.iter().flat_map(|st| st.outputs.iter().copied()).collect();
    let escape_at: HashMap<usize, usize> = chain.escapes.iter().enumerate().map(|(k, &v)| (v, k)).collect();
    let mut cuts: Vec<Vec<Cut>> = vec![];
    let mut widest = 0;
    for st in steps {
        let it = space(st, shape_of);
        if it.first() != Some(&rows) {
            return Ok(false);
        }
        widest = widest.max(it.iter().skip(1).product::<usize>());
        let mut cut = vec![];
        for &v in &st.inputs {
            let sh = shape_of(v).as_ref();
            let has_rows = sh.len() == it.len() && sh[0] == rows;
            cut.push(if produced.contains(&v) {
                if !has_rows {
                    return Ok(false);
                }
                Cut::Local
            } else if has_rows && rows != 1 {
                Cut::Rows
            } else if sh.len() < it.len() || sh.first() == Some(&1) {
                Cut::Whole
            } else {
                return Ok(false);
            });
        }
        cuts.push(cut);
    }
    let Some(block) = block_rows(rows, widest) else { return Ok(false) };
    // An input whose rows spread across memory is copied per block (see
    // `scattered`); a block narrower than a cache line would copy whole
    // lines for a few elements each (rows of a permuted cube, each a plane
    // of it, took three times as long as kernel by kernel).
    for (st, cut) in steps.iter().zip(&cuts) {
        for (&v, c) in st.inputs.iter().zip(cut) {
            let narrow = block * p.instrs[v].dtype.size() < LINE;
            if narrow && matches!(c, Cut::Rows) && values[v].as_ref().is_some_and(|d| scattered(d.layout())) {
                return Ok(false);
            }
        }
    }
    let row_len = |v: usize| shape_of(v).as_ref().iter().skip(1).product::<usize>();
    let sinks: Vec<RowSink> =
        chain.escapes.iter().map(|&v| RowSink::new(p.instrs[v].dtype, rows, row_len(v))).collect::<Result<_>>()?;
    let vals: &[Option<Data>] = values;
    let blocks = team::map(rows.div_ceil(block), |b| -> Result<()> {
        let (r0, r1) = (b * block, ((b + 1) * block).min(rows));
        let mut local: HashMap<usize, Data> = HashMap::new();
        for (st, cut) in steps.iter().zip(&cuts) {
            let ins: Vec<Data> = st
                .inputs
                .iter()
                .zip(cut)
                .map(|(&v, c)| match c {
                    Cut::Local => local.get(&v).expect("computed earlier in the block").clone(),
                    Cut::Whole => vals[v].clone().expect("inputs are computed first"),
                    Cut::Rows => {
                        let d = vals[v].as_ref().expect("inputs are computed first");
                        d.view(rows_of(d.layout(), r0, r1))
                    }
                })
                .collect::<Vec<Data>>()
                .into_iter()
                .zip(&st.inputs)
                .zip(cut)
                .map(|((d, &v), c)| -> Result<Data> {
                    if !matches!(c, Cut::Rows) || !scattered(d.layout()) {
                        return Ok(d);
                    }
                    // Rows spread across memory (a transposed input): copied
                    // once per block, so that every step reads them in order.
                    if let Some(s) = local.get(&v) {
                        return Ok(s.clone());
                    }
                    let s = Data::contiguous(crate::backend::cpu::copy("row block", &d)?, &d.layout().shape);
                    local.insert(v, s.clone());
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            let mut args: fused::Args = ins.into_iter().map(Arg::Owned).collect();
            // A fused step writes the values that escape (and that no later
            // step of the chain reads) straight into their sinks, and
            // prefetches its inputs one block ahead (`run_into`).
            let sink_of = |o: usize| escape_at.get(&o).copied().filter(|&k| chain.write_through[k]);
            if let Kernel::Fused(g) = &st.kernel {
                let mut shape = shape_of(st.outputs[0]).as_ref().to_vec();
                shape[0] = r1 - r0;
                let into: Vec<Option<Claimed>> =
                    st.outputs.iter().map(|&o| sink_of(o).map(|k| sinks[k].claim(r0, r1 - r0))).collect();
                let outs = fused::run_into(g, args, &shape, &into)?;
                for c in into.into_iter().flatten() {
                    c.written();
                }
                for (&o, d) in st.outputs.iter().zip(outs) {
                    if let Some(d) = d {
                        if let Some(&k) = escape_at.get(&o) {
                            sinks[k].write(r0, d.buffer());
                        }
                        local.insert(o, d);
                    }
                }
                continue;
            }
            let mut outs = fused::Outs::new();
            let block_shape = |v| {
                let mut s = shape_of(v).as_ref().to_vec();
                s[0] = r1 - r0;
                s
            };
            run_step(p, st, &mut args, block_shape, &mut outs)?;
            for (&o, d) in st.outputs.iter().zip(outs) {
                if let Some(&k) = escape_at.get(&o) {
                    sinks[k].write(r0, d.buffer());
                }
                local.insert(o, d);
            }
        }
        Ok(())
    });
    blocks.into_iter().collect::<Result<()>>()?;
    for (&v, sink) in chain.escapes.iter().zip(sinks) {
        let buf = sink.finish().ok_or(Error::Invalid { op: "compile", msg: "a row block was not computed".into() })?;
        values[v] = Some(Data::contiguous(buf, shape_of(v).as_ref()));
    }
    Ok(true)
}

/// True when a layout's innermost axis of more than one element is not
/// contiguous (nor a broadcast): a row of it reads one element per line.
fn scattered(l: &Layout) -> bool {
    l.shape.iter().zip(&l.strides).rev().find(|&(&d, _)| d > 1).is_some_and(|(_, &s)| s.unsigned_abs() > 1)
}

/// Rows `r0..r1` (of the leading axis) of a layout.
fn rows_of(l: &Layout, r0: usize, r1: usize) -> Layout {
    let mut starts = vec![0; l.ndim()];
    starts[0] = r0;
    let mut lens = l.shape.clone();
    lens[0] = r1 - r0;
    l.slice(&starts, &lens, &vec![1; l.ndim()])
}
