//! Fusion: turns an optimized program into kernel launches.
//!
//! Elementwise instructions (unary, binary with broadcasting, `where`,
//! casts) of one output shape that feed each other become one
//! [`FusedGroup`]: a register program run tile by tile, so intermediates
//! never reach memory. Inputs from outside a group may have any broadcastable
//! shape and layout (broadcasts and views are folded into the group's loads).
//! A member whose value is needed outside the group (by another kernel or as
//! a program output) is a group output: groups may have several outputs.
//! A matrix product read only by such a group (by one of its ops or by
//! several, as the copies of a shared `product + bias` that
//! rematerialization makes for a gelu) becomes the group's head: its bias
//! and activation run as an epilogue over its output.
//! A reduction that is the only consumer of a group's only output absorbs
//! the group (so `sum(x * x)` reads `x` once and never writes `x * x`).
//! Merging never creates a cycle: an instruction joins a group only if none
//! of its other inputs depends on that group.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::dtype::DType;
use crate::passes::Facts;
use crate::primitive::{FusionClass, Primitive, ReduceOp};
use crate::program::Program;

/// One op of a fused group, reading registers.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedOp {
    /// An elementwise primitive.
    pub prim: Primitive,
    /// Registers read: `0..inputs.len()` are the group's inputs, then one
    /// register per earlier op.
    pub args: Vec<usize>,
    /// Output dtype.
    pub dtype: DType,
}

/// A fused elementwise kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedGroup {
    /// Dtype of each input register.
    pub inputs: Vec<DType>,
    /// The ops, in order; op `k` writes register `inputs.len() + k`.
    pub ops: Vec<FusedOp>,
    /// Registers written to memory, in the order of the step's outputs.
    pub outputs: Vec<usize>,
}

impl FusedGroup {
    /// A group of one op reading inputs `0..n`.
    pub fn single(prim: Primitive, inputs: Vec<DType>, dtype: DType) -> FusedGroup {
        let n = inputs.len();
        FusedGroup { inputs, ops: vec![FusedOp { prim, args: (0..n).collect(), dtype }], outputs: vec![n] }
    }

    /// The dtype of a register.
    pub fn reg_dtype(&self, r: usize) -> DType {
        if r < self.inputs.len() {
            self.inputs[r]
        } else {
            self.ops[r - self.inputs.len()].dtype
        }
    }
}

/// What a step runs. `G` is the form of a fused group: the plan makes
/// [`FusedGroup`]s; a backend may lower each to its own form (one that
/// keeps the group's compiled code, say) with [`Kernel::map`].
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel<G = FusedGroup> {
    /// One primitive, run as eager evaluation runs it.
    Single(Primitive),
    /// A fused elementwise group.
    Fused(G),
    /// A matrix product whose result feeds a fused elementwise epilogue
    /// (bias, activation): the step reads `a`, `b`, then the group's other
    /// inputs; the product is the group's input register 0 and is never an
    /// output of the step.
    MatmulEpilogue(G),
    /// Reductions over the same axes of values of one shape, computed
    /// together from one pass over their inputs: a fused group produces
    /// the reduced values tile by tile (its outputs, which never reach
    /// memory) and each reduction folds one of them. The step writes one
    /// value per reduction.
    ReduceFused {
        /// The producer (outputs: the distinct reduced values).
        group: G,
        /// Each reduction and the index of the group output it reduces.
        reductions: Vec<(ReduceOp, usize)>,
        /// The reduced axes (of the iteration space).
        axes: Vec<usize>,
        /// An instruction whose shape is the iteration space.
        source: usize,
    },
}

impl<G> Kernel<G> {
    /// The same kernel with each fused group turned into `f(group)`.
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> Kernel<H> {
        match self {
            Kernel::Single(p) => Kernel::Single(p),
            Kernel::Fused(g) => Kernel::Fused(f(g)),
            Kernel::MatmulEpilogue(g) => Kernel::MatmulEpilogue(f(g)),
            Kernel::ReduceFused { group, reductions, axes, source } => {
                Kernel::ReduceFused { group: f(group), reductions, axes, source }
            }
        }
    }

    /// A copy that borrows the fused group as a plain [`FusedGroup`] (for
    /// descriptions such as `explain`'s, whatever form a backend keeps).
    pub fn as_ir(&self) -> Kernel<&FusedGroup>
    where
        G: std::borrow::Borrow<FusedGroup>,
    {
        match self {
            Kernel::Single(p) => Kernel::Single(p.clone()),
            Kernel::Fused(g) => Kernel::Fused(g.borrow()),
            Kernel::MatmulEpilogue(g) => Kernel::MatmulEpilogue(g.borrow()),
            Kernel::ReduceFused { group, reductions, axes, source } => Kernel::ReduceFused {
                group: group.borrow(),
                reductions: reductions.clone(),
                axes: axes.clone(),
                source: *source,
            },
        }
    }
}

/// True for primitives that cost nothing at run time: views, which share
/// their input's storage (a reshape may have to copy, so it is not free).
pub fn is_free(p: &Primitive) -> bool {
    matches!(p.class(), FusionClass::View) && !matches!(p, Primitive::Reshape { .. })
}

/// A planned kernel with the program values it reads and writes.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The kernel.
    pub kernel: Kernel,
    /// Values read.
    pub inputs: Vec<usize>,
    /// Values written.
    pub outputs: Vec<usize>,
    /// The program instructions the kernel computes, in program order (a
    /// fused group's members, its matmul head, its reductions): a step run
    /// op by op (a shapeless call at shapes where the group no longer
    /// shares one iteration space) evaluates these.
    pub members: Vec<usize>,
}

/// True when a planned kernel still computes its instructions at the
/// re-inferred `shapes` of a shapeless call: fusion grouped values of one
/// traced shape, and a fused kernel iterates over one space (its output's,
/// or for a reduction its source's), so every member (for a reduction,
/// every reduced value) must still have that shape. At other shapes, such
/// as `a = x * 2; b = a + y` traced on (2, 2), (2, 2) and called on (1,
/// 2), (3, 2), a backend runs the kernel's `members` op by op.
pub fn follows<G>(
    kernel: &Kernel<G>,
    members: &[usize],
    outputs: &[usize],
    p: &Program,
    shapes: &[Vec<usize>],
) -> bool {
    match kernel {
        Kernel::Single(_) => true,
        Kernel::Fused(_) | Kernel::MatmulEpilogue(_) => {
            let space = &shapes[outputs[0]];
            members.iter().all(|&m| shapes[m] == *space)
        }
        Kernel::ReduceFused { source, .. } => {
            let space = &shapes[*source];
            members.iter().all(|&m| match p.instrs[m].prim {
                Primitive::Reduce { .. } => shapes[p.instrs[m].inputs[0]] == *space,
                _ => shapes[m] == *space,
            })
        }
    }
}

/// Edges a [`Reach`] search may visit before it gives up and answers
/// "reaches" (the answer that forbids fusing: safe, only less fused).
const REACH_BUDGET: usize = 1 << 16;

/// Reachability between kernels while they are being formed: a search
/// forward from some kernels and backward from others, one step at a time
/// from the side that has done less work, until they meet (a path exists)
/// or one side runs out (none does). Its cost is about twice that of the
/// smaller of the two searches, so the usual question (does this value
/// depend on the group being grown, a few kernels back?) takes a few steps
/// however large the program. Marks are stamped with a counter, so no
/// search clears them.
struct Reach {
    fwd: Vec<u32>,
    bwd: Vec<u32>,
    epoch: u32,
    stacks: [Vec<usize>; 2],
    scratch: Vec<usize>,
}

impl Reach {
    /// A search over kernel nodes `0..nodes`.
    fn new(nodes: usize) -> Reach {
        Reach { fwd: vec![0; nodes], bwd: vec![0; nodes], epoch: 0, stacks: [vec![], vec![]], scratch: vec![] }
    }

    /// True when some node reachable forward from `from` (itself included)
    /// is reachable backward from `to` (itself included), never crossing
    /// an edge between the two nodes of `skip`; also true when the search
    /// exceeds [`REACH_BUDGET`]. `expand(node, forward, out)` pushes the
    /// node's successors (`forward`) or predecessors onto `out`, maybe
    /// with repeats and the node itself, which are ignored.
    fn meets(
        &mut self,
        from: impl IntoIterator<Item = usize>,
        to: impl IntoIterator<Item = usize>,
        skip: Option<(usize, usize)>,
        mut expand: impl FnMut(usize, bool, &mut Vec<usize>),
    ) -> bool {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.fwd.iter_mut().for_each(|v| *v = 0);
            self.bwd.iter_mut().for_each(|v| *v = 0);
            self.epoch = 1;
        }
        let e = self.epoch;
        let [fs, bs] = &mut self.stacks;
        fs.clear();
        bs.clear();
        for k in from {
            if self.fwd[k] != e {
                self.fwd[k] = e;
                fs.push(k);
            }
        }
        for k in to {
            if self.fwd[k] == e {
                return true;
            }
            if self.bwd[k] != e {
                self.bwd[k] = e;
                bs.push(k);
            }
        }
        let skipped = |a: usize, b: usize| skip.is_some_and(|(x, y)| (a, b) == (x, y) || (a, b) == (y, x));
        let mut work = [0usize; 2];
        loop {
            if fs.is_empty() || bs.is_empty() {
                return false;
            }
            let forward = work[0] <= work[1];
            let (stack, mine, other) =
                if forward { (&mut *fs, &mut self.fwd, &self.bwd) } else { (&mut *bs, &mut self.bwd, &self.fwd) };
            let node = stack.pop().expect("not empty");
            self.scratch.clear();
            expand(node, forward, &mut self.scratch);
            work[usize::from(!forward)] += self.scratch.len() + 1;
            for &m in &self.scratch {
                if m == node || mine[m] == e || skipped(node, m) {
                    continue;
                }
                if other[m] == e {
                    return true;
                }
                mine[m] = e;
                stack.push(m);
            }
            if work[0] + work[1] > REACH_BUDGET {
                return true;
            }
        }
    }
}

/// The kernel graph as groups form: instruction `x` outside groups is node
/// `x`, group `g` is node `n + g`. Only instructions up to `upto` count
/// (later ones are in no group yet and lead to none of these nodes).
struct FuseGraph<'a> {
    p: &'a Program,
    consumers: &'a [Vec<usize>],
    group_of: &'a [Option<usize>],
    groups: &'a [Vec<usize>],
    heads: &'a [Option<usize>],
    upto: usize,
}

impl FuseGraph<'_> {
    fn node(&self, x: usize) -> usize {
        self.group_of[x].map_or(x, |g| self.p.instrs.len() + g)
    }

    /// Pushes the successors (`forward`) or predecessors of node `k` onto `out`.
    fn expand(&self, k: usize, forward: bool, out: &mut Vec<usize>) {
        let n = self.p.instrs.len();
        let mut edges = |x: usize| {
            if forward {
                out.extend(self.consumers[x].iter().filter(|&&c| c <= self.upto).map(|&c| self.node(c)));
            } else {
                out.extend(self.p.instrs[x].inputs.iter().map(|&y| self.node(y)));
            }
        };
        if k < n {
            edges(k);
        } else {
            for &m in self.groups[k - n].iter().chain(self.heads[k - n].iter()) {
                edges(m);
            }
        }
    }
}

/// Merges two increasing lists into one.
fn merge_sorted(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// How [`plan`] groups a program's instructions.
struct Grouping {
    consumers: Vec<Vec<usize>>,
    is_output: Vec<bool>,
    group_of: Vec<Option<usize>>,
    groups: Vec<Vec<usize>>,
    heads: Vec<Option<usize>>,
    reds: Vec<RedKernel>,
}

/// Groups elementwise instructions and orders all kernels; no group grows
/// past [`Facts::max_group`] instructions.
pub fn plan(p: &Program, facts: &dyn Facts) -> Vec<Planned> {
    let Grouping { consumers, is_output, group_of, groups, heads, reds } = grouping(p, facts);
    let n = p.instrs.len();

    // Build the planned kernels; `first` orders them by their first instruction.
    let mut is_head = vec![false; n];
    for &h in heads.iter().flatten() {
        is_head[h] = true;
    }
    let mut planned: Vec<(usize, Planned)> = vec![];
    for (i, ins) in p.instrs.iter().enumerate() {
        match ins.prim.class() {
            FusionClass::Leaf | FusionClass::Elementwise => {}
            _ if is_head[i] => {}
            FusionClass::Reduce if matches!(ins.prim, Primitive::Reduce { .. }) => {}
            _ => planned.push((
                i,
                Planned {
                    kernel: Kernel::Single(ins.prim.clone()),
                    inputs: ins.inputs.clone(),
                    outputs: vec![i],
                    members: vec![i],
                },
            )),
        }
    }
    let mut absorbed = vec![false; groups.len()];
    for g in reds.iter().filter_map(|k| k.group) {
        absorbed[g] = true;
    }
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() || absorbed[g] {
            continue;
        }
        let head = heads[g];
        let (group, mut inputs, _) = build_group(p, members, head, &[], |m| {
            is_output[m] || consumers[m].iter().any(|&c| group_of[c] != Some(g))
        });
        let (kernel, first) = match head {
            Some(h) => {
                // The step reads the product's operands instead of the product.
                inputs.splice(0..1, p.instrs[h].inputs.iter().copied());
                (Kernel::MatmulEpilogue(group), h)
            }
            None => (Kernel::Fused(group), members[0]),
        };
        let outputs = members
            .iter()
            .copied()
            .filter(|&m| is_output[m] || consumers[m].iter().any(|&c| group_of[c] != Some(g)))
            .collect();
        let mut all: Vec<usize> = members.iter().copied().chain(head).collect();
        all.sort_unstable();
        planned.push((first, Planned { kernel, inputs, outputs, members: all }));
    }
    for k in &reds {
        let first_red = k.reds[0];
        let Primitive::Reduce { axes, .. } = &p.instrs[first_red].prim else { unreachable!("reductions only") };
        if k.group.is_none() && k.reds.len() == 1 {
            let ins = &p.instrs[first_red];
            planned.push((
                first_red,
                Planned {
                    kernel: Kernel::Single(ins.prim.clone()),
                    inputs: ins.inputs.clone(),
                    outputs: vec![first_red],
                    members: vec![first_red],
                },
            ));
            continue;
        }
        let members: &[usize] = k.group.map_or(&[], |g| &groups[g]);
        let sources: Vec<usize> = k.reds.iter().map(|&r| p.instrs[r].inputs[0]).collect();
        let (group, inputs, out_index) = build_group(p, members, None, &sources, |_| false);
        let reductions = k
            .reds
            .iter()
            .zip(out_index)
            .map(|(&r, i)| {
                let Primitive::Reduce { op, .. } = p.instrs[r].prim else { unreachable!("reductions only") };
                (op, i)
            })
            .collect();
        let first = members.first().copied().unwrap_or(first_red).min(first_red);
        let kernel = Kernel::ReduceFused { group, reductions, axes: axes.clone(), source: sources[0] };
        let mut all: Vec<usize> = members.iter().chain(&k.reds).copied().collect();
        all.sort_unstable();
        planned.push((first, Planned { kernel, inputs, outputs: k.reds.clone(), members: all }));
    }
    order(planned, n)
}

/// Groups the elementwise instructions (a matrix product heading a group
/// read only by it), then plans the reduction kernels.
fn grouping(p: &Program, facts: &dyn Facts) -> Grouping {
    let max_group = facts.max_group();
    let n = p.instrs.len();
    let consumers = p.consumers();
    let mut is_output = vec![false; n];
    for &o in &p.outputs {
        is_output[o] = true;
    }
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Vec<usize>> = vec![];
    // A group may start with a matmul whose only use is the group (epilogue fusion).
    let mut heads: Vec<Option<usize>> = vec![];
    // Kernel nodes: instruction `x` outside groups is node `x`, group `g` is node `n + g`.
    let mut reach = Reach::new(2 * n);
    for i in 0..n {
        if p.instrs[i].prim.class() != FusionClass::Elementwise {
            continue;
        }
        let shape = &p.instrs[i].shape;
        let mut joined = None;
        for &x in &p.instrs[i].inputs {
            let Some(g) = group_of[x] else { continue };
            if p.instrs[x].shape != *shape || joined == Some(g) || groups[g].len() >= max_group {
                continue;
            }
            // `i` joins `g` unless one of its other inputs depends on `g`
            // (at kernel level: reading any member of another group means
            // depending on every input of that group).
            let others: Vec<usize> = p.instrs[i]
                .inputs
                .iter()
                .filter(|&&y| group_of[y] != Some(g))
                .map(|&y| group_of[y].map_or(y, |h| n + h))
                .collect();
            let gr =
                FuseGraph { p, consumers: &consumers, group_of: &group_of, groups: &groups, heads: &heads, upto: i };
            let others_ok = others.is_empty() || !reach.meets([n + g], others, None, |k, f, o| gr.expand(k, f, o));
            if others_ok {
                joined = Some(g);
                break;
            }
        }
        let g = joined.unwrap_or_else(|| {
            // Its other readers (copies of a shared `product + bias`, say,
            // made by rematerialization) may join the group after `i`; a
            // head some reader stays outside of is let go after grouping.
            let head = p.instrs[i].inputs.iter().copied().find(|&x| {
                matches!(p.instrs[x].prim, Primitive::Matmul)
                    && p.instrs[x].shape == *shape
                    && consumers[x]
                        .iter()
                        .all(|&c| p.instrs[c].prim.class() == FusionClass::Elementwise && p.instrs[c].shape == *shape)
                    && !is_output[x]
                    && group_of[x].is_none()
            });
            groups.push(vec![]);
            heads.push(head);
            if let Some(h) = head {
                group_of[h] = Some(groups.len() - 1);
            }
            groups.len() - 1
        });
        groups[g].push(i);
        group_of[i] = Some(g);
        // Other same-shape groups this instruction reads merge into `g` when
        // neither reaches the other through a kernel outside both.
        for &y in &p.instrs[i].inputs {
            let Some(h) = group_of[y] else { continue };
            if h == g
                || p.instrs[y].shape != *shape
                || (heads[h].is_some() && heads[g].is_some())
                || groups[g].len() + groups[h].len() > max_group
            {
                continue;
            }
            // A product runs before its epilogue: it cannot read the group.
            let head_reads = |a: usize, b: usize| {
                heads[a].is_some_and(|hd| p.instrs[hd].inputs.iter().any(|&x| group_of[x] == Some(b)))
            };
            if head_reads(g, h) || head_reads(h, g) {
                continue;
            }
            // A path between the two other than their direct edges, either way.
            let gr =
                FuseGraph { p, consumers: &consumers, group_of: &group_of, groups: &groups, heads: &heads, upto: i };
            let skip = Some((n + h, n + g));
            let linked = reach.meets([n + h], [n + g], skip, |k, f, o| gr.expand(k, f, o))
                || reach.meets([n + g], [n + h], skip, |k, f, o| gr.expand(k, f, o));
            if linked {
                continue;
            }
            let moved = std::mem::take(&mut groups[h]);
            for &m in &moved {
                group_of[m] = Some(g);
            }
            if let Some(hd) = heads[h].take() {
                group_of[hd] = Some(g);
                heads[g] = Some(hd);
            }
            groups[g] = merge_sorted(&groups[g], &moved);
        }
    }

    // A product read outside its group runs as a kernel of its own, before
    // the group (which then reads it as an input: no cycle, the product's
    // own inputs were the group's already).
    for (g, head) in heads.iter_mut().enumerate() {
        if let Some(h) = *head {
            if consumers[h].iter().any(|&c| group_of[c] != Some(g)) {
                *head = None;
                group_of[h] = None;
            }
        }
    }

    let reds = plan_reductions(p, &groups, &heads, &group_of, &consumers, &is_output);
    Grouping { consumers, is_output, group_of, groups, heads, reds }
}

/// Twins that [`plan`] would put in one kernel: elementwise members of one
/// group (not absorbed by a reduction) computing the same op of the same
/// values, as the copies that rematerialization makes of a shared value
/// for readers in different kernels, when fusion then puts both copies in
/// one kernel (a product's `* scale` read by softmax's max and by its
/// numerator: both became outputs of the product's epilogue). Returns, per
/// value, the value to read instead: itself, or the first of its twins.
/// Program outputs keep their own values.
pub fn twins(p: &Program, facts: &dyn Facts) -> Vec<usize> {
    let Grouping { is_output, groups, reds, .. } = grouping(p, facts);
    let mut rename: Vec<usize> = (0..p.instrs.len()).collect();
    let absorbed: Vec<usize> = reds.iter().filter_map(|k| k.group).collect();
    for (g, members) in groups.iter().enumerate() {
        if absorbed.contains(&g) {
            continue;
        }
        for (k, &m) in members.iter().enumerate() {
            let same = |a: usize| {
                let (x, y) = (&p.instrs[a], &p.instrs[m]);
                x.prim == y.prim
                    && x.dtype == y.dtype
                    && x.shape == y.shape
                    && x.inputs.len() == y.inputs.len()
                    && x.inputs.iter().zip(&y.inputs).all(|(&u, &v)| rename[u] == rename[v])
            };
            if is_output[m] {
                continue;
            }
            if let Some(&twin) = members[..k].iter().find(|&&a| rename[a] == a && same(a)) {
                rename[m] = twin;
            }
        }
    }
    rename
}

/// Builds the register program of `members` (and of a matmul `head`, read
/// as input register 0). Members for which `is_out` holds are the group's
/// outputs, then each value of `extra_outs` (a member, or an outside value
/// copied through an identity op). Returns the group, the values it reads
/// and the index in the group's outputs of each of `extra_outs`.
fn build_group(
    p: &Program,
    members: &[usize],
    head: Option<usize>,
    extra_outs: &[usize],
    is_out: impl Fn(usize) -> bool,
) -> (FusedGroup, Vec<usize>, Vec<usize>) {
    // Registers by value: inputs first, then members (hash maps, so a
    // group costs time linear in its size).
    let member_at: HashMap<usize, usize> = members.iter().enumerate().map(|(k, &m)| (m, k)).collect();
    let mut inputs: Vec<usize> = head.into_iter().collect();
    let mut input_at: HashMap<usize, usize> = inputs.iter().enumerate().map(|(k, &x)| (x, k)).collect();
    let outside = |x: usize| !member_at.contains_key(&x) && Some(x) != head;
    for &x in members.iter().flat_map(|&m| p.instrs[m].inputs.iter()).chain(extra_outs) {
        if outside(x) && !input_at.contains_key(&x) {
            input_at.insert(x, inputs.len());
            inputs.push(x);
        }
    }
    let n_in = inputs.len();
    let reg = |v: usize| -> usize {
        match input_at.get(&v) {
            Some(&r) => r,
            None => n_in + member_at[&v],
        }
    };
    let mut ops: Vec<FusedOp> = members
        .iter()
        .map(|&m| FusedOp {
            prim: p.instrs[m].prim.clone(),
            args: p.instrs[m].inputs.iter().map(|&x| reg(x)).collect(),
            dtype: p.instrs[m].dtype,
        })
        .collect();
    let mut outputs: Vec<usize> = members.iter().copied().filter(|&m| is_out(m)).map(reg).collect();
    let mut output_at: HashMap<usize, usize> = outputs.iter().enumerate().map(|(k, &r)| (r, k)).collect();
    let mut copied: HashMap<usize, usize> = HashMap::new();
    let mut extra = vec![];
    for &v in extra_outs {
        let r = if outside(v) {
            // Registers written out are op results: copy an input through.
            match copied.get(&v) {
                Some(&r) => r,
                None => {
                    let dt = p.instrs[v].dtype;
                    ops.push(FusedOp { prim: Primitive::AsType(dt), args: vec![reg(v)], dtype: dt });
                    copied.insert(v, n_in + ops.len() - 1);
                    n_in + ops.len() - 1
                }
            }
        } else {
            reg(v)
        };
        let at = *output_at.entry(r).or_insert_with(|| {
            outputs.push(r);
            outputs.len() - 1
        });
        extra.push(at);
    }
    let group = FusedGroup { inputs: inputs.iter().map(|&x| p.instrs[x].dtype).collect(), ops, outputs };
    (group, inputs, extra)
}

/// A reduction kernel being planned: reductions over the same axes of
/// values of one shape, and the elementwise group it absorbs, if any.
struct RedKernel {
    group: Option<usize>,
    reds: Vec<usize>,
}

/// Plans reduction kernels. A group whose values feed only reductions over
/// the same axes is absorbed by them (its values never reach memory); a
/// reduction of a value that another reduction kernel already reads (same
/// axes, same shape) joins it, so `max(x)` and `sumexp(x)`, or `mean(x)`
/// and `var(x)`, read `x` once. Joining never creates a cycle between kernels.
fn plan_reductions(
    p: &Program,
    groups: &[Vec<usize>],
    heads: &[Option<usize>],
    group_of: &[Option<usize>],
    consumers: &[Vec<usize>],
    is_output: &[bool],
) -> Vec<RedKernel> {
    let n = p.instrs.len();
    let red_axes = |r: usize| match &p.instrs[r].prim {
        Primitive::Reduce { axes, .. } => Some(axes),
        _ => None,
    };
    let mut kernels: Vec<RedKernel> = vec![];
    let mut kernel_of: Vec<Option<usize>> = vec![None; n];
    let mut absorbed_by: Vec<Option<usize>> = vec![None; groups.len()];
    // The kernels reading each value, in increasing order.
    let mut readers: Vec<Vec<usize>> = vec![vec![]; n];
    let note = |readers: &mut Vec<Vec<usize>>, v: usize, k: usize| {
        if readers[v].last() != Some(&k) {
            readers[v].push(k);
        }
    };
    for (g, members) in groups.iter().enumerate() {
        if members.is_empty() || heads[g].is_some() || members.iter().any(|&m| is_output[m]) {
            continue;
        }
        let mut reds: Vec<usize> =
            members.iter().flat_map(|&m| consumers[m].iter().copied()).filter(|&c| group_of[c] != Some(g)).collect();
        reds.sort_unstable();
        reds.dedup();
        let Some(axes) = reds.first().and_then(|&r| red_axes(r)) else { continue };
        if reds.iter().all(|&r| red_axes(r) == Some(axes)) {
            let k = kernels.len();
            for &r in &reds {
                kernel_of[r] = Some(k);
                note(&mut readers, p.instrs[r].inputs[0], k);
            }
            for &x in members.iter().flat_map(|&m| p.instrs[m].inputs.iter()) {
                note(&mut readers, x, k);
            }
            absorbed_by[g] = Some(k);
            kernels.push(RedKernel { group: Some(g), reds });
        }
    }
    // Kernel nodes: instruction `x` alone is `x`, group `g` is `n + g`,
    // reduction kernel `k` is `2 * n + k`.
    let mut reach = Reach::new(3 * n);
    for r in 0..n {
        let Some(axes) = red_axes(r) else { continue };
        if kernel_of[r].is_some() {
            continue;
        }
        let v = p.instrs[r].inputs[0];
        let same_space = |k: &RedKernel| {
            let q = k.reds[0];
            red_axes(q) == Some(axes) && p.instrs[p.instrs[q].inputs[0]].shape == p.instrs[v].shape
        };
        let ctx = RedGraph {
            p,
            consumers,
            groups,
            heads,
            group_of,
            kernel_of: &kernel_of,
            kernels: &kernels,
            absorbed_by: &absorbed_by,
        };
        let joined = readers[v].iter().copied().find(|&k| same_space(&kernels[k]) && ctx.may_join(&mut reach, r, k));
        match joined {
            Some(k) => {
                kernel_of[r] = Some(k);
                kernels[k].reds.push(r);
            }
            None => {
                kernel_of[r] = Some(kernels.len());
                note(&mut readers, v, kernels.len());
                kernels.push(RedKernel { group: None, reds: vec![r] });
            }
        }
    }
    for k in &mut kernels {
        k.reds.sort_unstable();
    }
    kernels
}

/// The kernel graph as reductions are planned: groups (absorbed ones
/// belong to their reduction kernel), reduction kernels, and single
/// instructions.
struct RedGraph<'a> {
    p: &'a Program,
    consumers: &'a [Vec<usize>],
    groups: &'a [Vec<usize>],
    heads: &'a [Option<usize>],
    group_of: &'a [Option<usize>],
    kernel_of: &'a [Option<usize>],
    kernels: &'a [RedKernel],
    absorbed_by: &'a [Option<usize>],
}

impl RedGraph<'_> {
    /// The kernel node of instruction `i`.
    fn node(&self, i: usize) -> usize {
        let n = self.p.instrs.len();
        match (self.group_of[i], self.kernel_of[i]) {
            (Some(g), _) => self.absorbed_by[g].map_or(n + g, |k| 2 * n + k),
            (None, Some(k)) => 2 * n + k,
            (None, None) => i,
        }
    }

    /// True when reduction `r` (not yet in a kernel) may join reduction
    /// kernel `k` without making the kernel graph cyclic (the graph is
    /// acyclic before): neither reads the other's reductions (a reduction's
    /// value is ready only after its whole kernel), and no path leads from
    /// one to the other through a third kernel.
    fn may_join(&self, reach: &mut Reach, r: usize, k: usize) -> bool {
        let n = self.p.instrs.len();
        let kn = 2 * n + k;
        if self.kernel_of[self.p.instrs[r].inputs[0]] == Some(k)
            || self.consumers[r].iter().any(|&c| self.node(c) == kn)
        {
            return false;
        }
        let expand = |node: usize, forward: bool, out: &mut Vec<usize>| {
            let mut edges = |x: usize| {
                if forward {
                    out.extend(self.consumers[x].iter().map(|&c| self.node(c)));
                } else {
                    out.extend(self.p.instrs[x].inputs.iter().map(|&y| self.node(y)));
                }
            };
            if node < n {
                edges(node);
            } else if node < 2 * n {
                for &m in self.groups[node - n].iter().chain(self.heads[node - n].iter()) {
                    edges(m);
                }
            } else {
                let kernel = &self.kernels[node - 2 * n];
                for &m in kernel.reds.iter().chain(kernel.group.iter().flat_map(|&g| self.groups[g].iter())) {
                    edges(m);
                }
            }
        };
        !reach.meets([kn], [r], Some((kn, r)), expand) && !reach.meets([r], [kn], Some((kn, r)), expand)
    }
}

/// Topological order of kernels (a kernel runs after the producers of all
/// its inputs), ties broken by first instruction: of the kernels whose
/// inputs are ready, the one with the first first instruction runs next.
fn order(mut planned: Vec<(usize, Planned)>, n: usize) -> Vec<Planned> {
    planned.sort_by_key(|(first, _)| *first);
    let mut producer = vec![usize::MAX; n];
    for (k, (_, pl)) in planned.iter().enumerate() {
        for &o in &pl.outputs {
            producer[o] = k;
        }
    }
    // Kahn's algorithm with the ready kernels in a min-heap.
    let mut waiting = vec![0usize; planned.len()];
    let mut users: Vec<Vec<usize>> = vec![vec![]; planned.len()];
    for (k, (_, pl)) in planned.iter().enumerate() {
        for d in pl.inputs.iter().map(|&i| producer[i]).filter(|&d| d != usize::MAX) {
            waiting[k] += 1;
            users[d].push(k);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..planned.len()).filter(|&k| waiting[k] == 0).map(Reverse).collect();
    let mut out_order = Vec::with_capacity(planned.len());
    while let Some(Reverse(k)) = ready.pop() {
        out_order.push(k);
        for &u in &users[k] {
            waiting[u] -= 1;
            if waiting[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    assert_eq!(out_order.len(), planned.len(), "the kernel graph is acyclic");
    let mut slots: Vec<Option<Planned>> = planned.into_iter().map(|(_, p)| Some(p)).collect();
    out_order.into_iter().map(|k| slots[k].take().expect("each kernel once")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::tests::{trace, Facts};
    use crate::passes::Facts as _;

    fn plan(p: &Program) -> Vec<Planned> {
        super::plan(p, &Facts)
    }

    fn fused_sizes(plan: &[Planned]) -> Vec<usize> {
        plan.iter()
            .filter_map(|k| match &k.kernel {
                Kernel::Fused(g) => Some(g.ops.len()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn elementwise_chain_is_one_kernel() {
        let p = trace(&[&[8]], |a| {
            let x = &a[0];
            Ok(vec![((x * 0.5f32)? * (x.tanh()? + 1.0f32)?)?])
        });
        let k = plan(&p);
        assert_eq!(k.len(), 1);
        assert_eq!(fused_sizes(&k), vec![4]);
    }

    #[test]
    fn long_chains_split_into_groups_of_at_most_max_group() {
        let p = trace(&[&[8]], |a| {
            let mut y = a[0].clone();
            for _ in 0..1200 {
                y = y.sin()?;
            }
            Ok(vec![y])
        });
        let max = Facts.max_group();
        assert_eq!(fused_sizes(&plan(&p)), vec![max, max, 1200 - 2 * max]);
    }

    #[test]
    fn a_group_read_by_a_product_does_not_merge_into_its_epilogue() {
        // `y @ w + y`: merging `y` into the product's epilogue would make
        // the product read a value its own kernel computes after it.
        let p = trace(&[&[8, 8], &[8, 8]], |a| {
            let y = (&a[0] + 1.0f32)?;
            Ok(vec![(y.matmul(&a[1])? + &y)?])
        });
        let k = plan(&p);
        assert_eq!(k.len(), 2, "{k:?}");
        assert!(matches!(k[0].kernel, Kernel::Fused(_)), "{k:?}");
        assert!(matches!(k[1].kernel, Kernel::MatmulEpilogue(_)), "{k:?}");
    }

    #[test]
    fn bias_and_activation_fuse_into_the_matmul() {
        let p = trace(&[&[4, 8], &[8, 16], &[16]], |a| Ok(vec![a[0].matmul(&a[1])?.add(&a[2])?.maximum(0.0f32)?]));
        let k = plan(&p);
        assert_eq!(k.len(), 1, "{k:?}");
        match &k[0].kernel {
            Kernel::MatmulEpilogue(g) => assert_eq!(g.ops.len(), 2),
            other => panic!("expected a matmul epilogue, got {other:?}"),
        }
        assert_eq!(k[0].inputs.len(), 3 + 1, "a, b, bias and the 0.0 constant");
    }

    #[test]
    fn sum_of_squares_reads_its_input_once() {
        let p = trace(&[&[64, 32]], |a| Ok(vec![(&a[0] * &a[0])?.sum(1, false)?.sqrt()?]));
        let k = plan(&p);
        assert_eq!(k.len(), 2, "{k:?}");
        assert!(matches!(&k[0].kernel, Kernel::ReduceFused { group, .. } if group.ops.len() == 1));
        assert_eq!(k[0].inputs, vec![p.inputs[0].unwrap()], "the reduction reads x, not x * x");
    }

    #[test]
    fn intermediate_used_elsewhere_becomes_an_output() {
        let p = trace(&[&[8, 4]], |a| {
            let e = a[0].exp()?;
            let s = e.sum(1, true)?;
            Ok(vec![(e / s)?])
        });
        let k = plan(&p);
        // exp group, sum, div group: the div cannot join exp's group because
        // it also reads the sum, which depends on that group.
        assert_eq!(k.len(), 3);
        assert!(matches!(k[1].kernel, Kernel::Single(Primitive::Reduce { .. })));
    }

    #[test]
    fn sibling_reductions_share_one_kernel() {
        let p = trace(&[&[16, 8]], |a| {
            let x = &a[0];
            Ok(vec![x.max(1, true)?, x.sum(1, false)?, (x * x)?.mean(1, true)?, x.sum(0, false)?])
        });
        let k = plan(&p);
        let fused: Vec<&Planned> = k.iter().filter(|k| matches!(k.kernel, Kernel::ReduceFused { .. })).collect();
        assert_eq!(fused.len(), 1, "{k:?}");
        assert_eq!(fused[0].outputs.len(), 3, "max, sum and mean over axis 1: {k:?}");
        assert_eq!(fused[0].inputs, vec![p.inputs[0].unwrap()], "x is read once");
        // The sum over axis 0 is another iteration order: a kernel of its own.
        assert_eq!(k.len(), 2, "{k:?}");
    }

    #[test]
    fn a_reduction_of_a_reduction_is_not_a_sibling() {
        let p = trace(&[&[16, 8]], |a| {
            let x = &a[0];
            Ok(vec![(x * &x.max(1, true)?)?.sum(1, false)?])
        });
        let k = plan(&p);
        assert_eq!(k.len(), 2, "max first, then the sum that reads it: {k:?}");
        assert!(matches!(k[0].kernel, Kernel::Single(Primitive::Reduce { .. })), "{k:?}");
    }
}
