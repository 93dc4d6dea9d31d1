//! What the two x86 code generators ([`jit_x86`](crate::backend::cpu::jit_x86)
//! for AVX-512, [`jit_avx2`](crate::backend::cpu::jit_avx2) for AVX2 + FMA)
//! share: the generated function's calling convention, the loop schedule of
//! a program (which values are computed before the loop, which in it, and
//! the unrolled copies of the body) and the executable code itself.
//!
//! The generated function is `extern "sysv64" fn(ins: *const *const f32,
//! outs: *const *mut f32, len: usize)`. The pointer tables stay in `rdi`
//! (inputs) and `rsi` (outputs), the count of positions left is in `rcx`,
//! the constant pool's address in `r10`; `rax` is the byte offset of the
//! current position and `r11` a scratch register. The prologue loads the
//! pointers the loop reads into the nine general registers of [`PTRS`]
//! (see [`Ptrs`]): those of the inputs read at every position and of the
//! outputs, in order. A broadcast input is read once, before the loop,
//! through its table entry, so scalars and broadcast constants take no
//! register; pointers past the ninth are read from their table into `r11`
//! where they are used (an L1 hit per vector and stream), so a kernel may
//! have any number of inputs and outputs.

use iced_x86::code_asm::*;

use crate::backend::cpu::jit::{fix_lanes_sysv, Fix, InputSet, Node, Pred, Prog, Un, Val};
use crate::backend::cpu::simd_math::Table;

/// General registers holding the pointers the loop reads (see [`Ptrs`]).
pub const PTRS: [AsmRegister64; 9] = [r8, r9, r12, r13, r14, r15, rbx, rbp, rdx];

/// Where each input's and output's pointer is while the kernel runs: in a
/// register of [`PTRS`] (streamed inputs, then outputs, in order, while
/// registers last) or only in its table (broadcast inputs, and the rest).
pub struct Ptrs {
    /// Per input, then per output: its register.
    reg: Vec<Option<AsmRegister64>>,
    n_in: usize,
}

impl Ptrs {
    /// The homes of `n_in` inputs (those in `bcast` are broadcast) and
    /// `n_out` outputs.
    pub fn new(n_in: usize, n_out: usize, bcast: &InputSet) -> Ptrs {
        let mut free = PTRS.into_iter();
        let reg = (0..n_in + n_out).map(|k| if k < n_in && bcast.contains(k) { None } else { free.next() }).collect();
        Ptrs { reg, n_in }
    }

    /// The table entry of pointer `k` (inputs, then outputs).
    fn entry(&self, k: usize) -> AsmMemoryOperand {
        let (table, i) = if k < self.n_in { (rdi, k) } else { (rsi, k - self.n_in) };
        qword_ptr(table + (8 * i) as i32)
    }

    /// A register holding pointer `k` (inputs, then outputs): its own, or
    /// `r11` loaded from the table here.
    pub fn get(&self, a: &mut CodeAssembler, k: usize) -> Result<AsmRegister64, IcedError> {
        if let Some(r) = self.reg[k] {
            return Ok(r);
        }
        a.mov(r11, self.entry(k))?;
        Ok(r11)
    }

    /// A register holding input `k`'s pointer (`r11` when it has none;
    /// valid until `r11` is written again).
    pub fn input(&self, a: &mut CodeAssembler, k: usize) -> Result<AsmRegister64, IcedError> {
        self.get(a, k)
    }

    /// A register holding output `j`'s pointer (as [`Ptrs::input`]).
    pub fn output(&self, a: &mut CodeAssembler, j: usize) -> Result<AsmRegister64, IcedError> {
        self.get(a, self.n_in + j)
    }
}

/// The callee-saved registers the prologue pushes (in this order).
const SAVED: [AsmRegister64; 6] = [rbx, rbp, r12, r13, r14, r15];

/// Code generation failed: out of registers (or an assembler error).
pub struct NoCode;

impl From<IcedError> for NoCode {
    fn from(_: IcedError) -> NoCode {
        NoCode
    }
}

/// An operand as an instruction reads it: a vector register of type `R`,
/// or memory.
#[derive(Clone, Copy)]
pub enum Opnd<R> {
    /// A register.
    Reg(R),
    /// Memory: a constant of the pool, or a value kept on the stack.
    Mem(AsmMemoryOperand),
}

/// `$a.$m($d, $s1, $s2)` for an [`Opnd`] `$s2`: the instruction with a
/// register or a memory operand.
macro_rules! emit3 {
    ($a:expr, $m:ident, $d:expr, $s1:expr, $s2:expr) => {
        match $s2 {
            $crate::backend::cpu::jit_code::Opnd::Reg(r) => $a.$m($d, $s1, r),
            $crate::backend::cpu::jit_code::Opnd::Mem(m) => $a.$m($d, $s1, m),
        }
    };
}
pub(crate) use emit3;

/// Emits `$d = $s1 op $s2` for the [`Bin`](crate::backend::cpu::jit::Bin)
/// `$op`: `$and` and `$xor` name the bitwise instructions of the vector
/// width (and `$or`), and `$scalef` is the expression for `Bin::Scalef`. Evaluates to
/// the assembler's result.
macro_rules! emit_bin {
    ($a:expr, $op:expr, $d:expr, $s1:expr, $s2:expr, $and:ident, $xor:ident, $or:ident, $scalef:expr) => {{
        use $crate::backend::cpu::jit::Bin;
        use $crate::backend::cpu::jit_code::emit3;
        match $op {
            Bin::Add => emit3!($a, vaddps, $d, $s1, $s2),
            Bin::Sub => emit3!($a, vsubps, $d, $s1, $s2),
            Bin::Mul => emit3!($a, vmulps, $d, $s1, $s2),
            Bin::Div => emit3!($a, vdivps, $d, $s1, $s2),
            Bin::Min => emit3!($a, vminps, $d, $s1, $s2),
            Bin::Max => emit3!($a, vmaxps, $d, $s1, $s2),
            Bin::And => emit3!($a, $and, $d, $s1, $s2),
            Bin::Xor => emit3!($a, $xor, $d, $s1, $s2),
            Bin::Or => emit3!($a, $or, $d, $s1, $s2),
            Bin::IAdd => emit3!($a, vpaddd, $d, $s1, $s2),
            Bin::ISub => emit3!($a, vpsubd, $d, $s1, $s2),
            Bin::IMul => emit3!($a, vpmulld, $d, $s1, $s2),
            Bin::IMin => emit3!($a, vpminsd, $d, $s1, $s2),
            Bin::IMax => emit3!($a, vpmaxsd, $d, $s1, $s2),
            Bin::Scalef => $scalef,
        }
    }};
}
pub(crate) use emit_bin;

/// [`emit_bin!`] for a program of `f64` lanes (the `pd` forms, 64-bit
/// integer `IAdd`/`ISub`); the `i32` operations, which such a program
/// never holds, evaluate to `$none`.
macro_rules! emit_bin_f64 {
    ($a:expr, $op:expr, $d:expr, $s1:expr, $s2:expr, $and:ident, $xor:ident, $or:ident, $scalef:expr, $none:expr) => {{
        use $crate::backend::cpu::jit::Bin;
        use $crate::backend::cpu::jit_code::emit3;
        match $op {
            Bin::Add => emit3!($a, vaddpd, $d, $s1, $s2),
            Bin::Sub => emit3!($a, vsubpd, $d, $s1, $s2),
            Bin::Mul => emit3!($a, vmulpd, $d, $s1, $s2),
            Bin::Div => emit3!($a, vdivpd, $d, $s1, $s2),
            Bin::Min => emit3!($a, vminpd, $d, $s1, $s2),
            Bin::Max => emit3!($a, vmaxpd, $d, $s1, $s2),
            Bin::And => emit3!($a, $and, $d, $s1, $s2),
            Bin::Xor => emit3!($a, $xor, $d, $s1, $s2),
            Bin::Or => emit3!($a, $or, $d, $s1, $s2),
            Bin::IAdd => emit3!($a, vpaddq, $d, $s1, $s2),
            Bin::ISub => emit3!($a, vpsubq, $d, $s1, $s2),
            Bin::Scalef => $scalef,
            Bin::IMul | Bin::IMin | Bin::IMax => $none,
        }
    }};
}
pub(crate) use emit_bin_f64;

/// Whether a [`Bin`](crate::backend::cpu::jit::Bin) operation's operands
/// may be swapped (to put the one in memory second).
pub fn commutes(op: crate::backend::cpu::jit::Bin) -> bool {
    use crate::backend::cpu::jit::Bin;
    matches!(op, Bin::Add | Bin::Mul | Bin::And | Bin::Xor | Bin::Or | Bin::IAdd | Bin::IMul | Bin::IMin | Bin::IMax)
}

/// The `vpcmpd` immediate of a predicate of signed integers (`Unord`
/// is never recorded for them: false, as `vpcmpd`'s FALSE).
pub fn int_pred_imm(p: Pred) -> i32 {
    match p {
        Pred::Eq => 0,
        Pred::Lt => 1,
        Pred::Le => 2,
        Pred::Unord => 3,
        Pred::Neq => 4,
        Pred::Ge => 5,
        Pred::Gt => 6,
    }
}

/// The `vcmpps` immediate of a predicate (ordered, non-signalling).
pub fn pred_imm(p: Pred) -> i32 {
    match p {
        Pred::Eq => 0x00,    // EQ_OQ
        Pred::Neq => 0x04,   // NEQ_UQ
        Pred::Le => 0x12,    // LE_OQ
        Pred::Unord => 0x03, // UNORD_Q
        Pred::Lt => 0x11,    // LT_OQ
        Pred::Ge => 0x1D,    // GE_OQ
        Pred::Gt => 0x1E,    // GT_OQ
    }
}

/// 64 bytes of the constant pool, aligned so that every 32- or 64-byte
/// entry at a multiple of its size is aligned too.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct PoolLine([u32; 16]);

/// A constant pool holding `words` in order (zero-padded to whole lines).
pub fn pool(words: &[u32]) -> Box<[PoolLine]> {
    words
        .chunks(16)
        .map(|c| {
            let mut line = [0u32; 16];
            line[..c.len()].copy_from_slice(c);
            PoolLine(line)
        })
        .collect()
}

/// Saves the callee-saved registers, moves the length into `rcx`, loads
/// the pointers that have registers in `ptrs` and `pool`'s address into
/// `r10`.
pub fn prologue(a: &mut CodeAssembler, ptrs: &Ptrs, pool: &[PoolLine]) -> Result<(), IcedError> {
    for r in SAVED {
        a.push(r)?;
    }
    a.mov(rcx, rdx)?;
    for (k, r) in ptrs.reg.iter().enumerate() {
        if let Some(r) = *r {
            a.mov(r, ptrs.entry(k))?;
        }
    }
    a.mov(r10, pool.as_ptr() as u64)
}

/// Clears the upper vector state, restores the registers [`prologue`] saved
/// and returns.
pub fn epilogue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.vzeroupper()?;
    for r in SAVED.into_iter().rev() {
        a.pop(r)?;
    }
    a.ret()
}

/// The general registers the System V convention lets a callee clobber:
/// generated code may hold any of them live.
const CLOBBERED: [AsmRegister64; 9] = [rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11];

/// Opens a frame for a call out of generated code (see
/// [`Node::Fix`]): pushes the
/// general registers a callee may clobber and `rbx`, keeps the stack
/// pointer in `rbx`, and reserves `bytes` at `rsp`, aligned to 64 bytes.
/// The stack slots the AVX2 generator addresses through `rsp` are out of
/// reach until [`close_call`]: operands must be in registers first.
pub fn open_call(a: &mut CodeAssembler, bytes: i32) -> Result<(), IcedError> {
    for r in CLOBBERED {
        a.push(r)?;
    }
    a.push(rbx)?;
    a.mov(rbx, rsp)?;
    a.and(rsp, -64)?;
    a.sub(rsp, (bytes + 63) & !63)
}

/// Calls [`fix_lanes_sysv`] for `fix` on `lanes` lanes, with the
/// operands at `[rsp + a_at]` and `[rsp + b_at]` and the vector path's
/// results (fixed in place) at `[rsp + out_at]`, inside a frame
/// [`open_call`] made. Clears the upper vector state first (the callee is
/// compiled for any x86-64): the caller saved every vector register it
/// needs.
pub fn call_fix(a: &mut CodeAssembler, fix: Fix, lanes: u32, at: [i32; 3]) -> Result<(), IcedError> {
    a.vzeroupper()?;
    a.lea(rdi, qword_ptr(rsp + at[0]))?;
    a.lea(rsi, qword_ptr(rsp + at[1]))?;
    a.lea(rdx, qword_ptr(rsp + at[2]))?;
    a.mov(ecx, lanes)?;
    a.mov(r8d, fix.code() as u32)?;
    let callee: unsafe extern "sysv64" fn(*const f32, *const f32, *mut f32, usize, usize) = fix_lanes_sysv;
    a.mov(rax, callee as usize as u64)?;
    a.call(rax)
}

/// Closes the frame [`open_call`] opened, restoring the registers.
pub fn close_call(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rsp, rbx)?;
    a.pop(rbx)?;
    for r in CLOBBERED.into_iter().rev() {
        a.pop(r)?;
    }
    Ok(())
}

/// Where a program's values are computed for one broadcast pattern, and
/// the nodes of the loop body's unrolled copies.
pub struct Schedule {
    /// The program with the unrolled copies' nodes appended.
    pub q: Prog,
    /// Per node of `q`: the copy of the body that computes it (0 for the
    /// program's own nodes); its inputs are read that many vectors further on.
    pub copy_of: Vec<usize>,
    /// Per node of the program: loop-invariant (broadcast inputs, constants
    /// and what only they feed).
    pub inv: Vec<bool>,
    /// Invariant values needed, computed once before the loop (constants excluded).
    pub pre: Vec<usize>,
    /// The loop body: the needed values that vary.
    pub body: Vec<usize>,
    /// `copy[c][i]`: the node of `q` computing value `i` for copy `c` of
    /// the body (invariant values are their own copies).
    pub copy: Vec<Vec<Val>>,
}

impl Schedule {
    /// The schedule of `p` for the broadcast inputs `bcast` with `copies`
    /// copies of the body per iteration.
    pub fn new(p: &Prog, bcast: &InputSet, copies: usize) -> Schedule {
        let nodes = &p.nodes;
        let mut inv = vec![false; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            inv[i] = match *n {
                Node::Input(k) | Node::InputMask(k) | Node::InputHalf(k, _) | Node::InputByte(k) => bcast.contains(k),
                Node::Const(_) => true,
                _ => n.operands().iter().all(|&o| inv[o as usize]),
            };
        }
        // Values that are needed: the outputs and, transitively, their operands.
        let mut live = vec![false; nodes.len()];
        for &o in &p.outputs {
            live[o as usize] = true;
        }
        for i in (0..nodes.len()).rev() {
            if live[i] {
                for o in nodes[i].operands() {
                    live[o as usize] = true;
                }
            }
        }
        let pre = (0..nodes.len()).filter(|&i| live[i] && inv[i] && !matches!(nodes[i], Node::Const(_))).collect();
        let body: Vec<usize> = (0..nodes.len()).filter(|&i| live[i] && !inv[i]).collect();
        let mut all = nodes.clone();
        let mut copy_of = vec![0; nodes.len()];
        let mut copy: Vec<Vec<Val>> = vec![(0..nodes.len() as Val).collect()];
        for c in 1..copies {
            let mut cv: Vec<Val> = (0..nodes.len() as Val).collect();
            for &i in &body {
                let n = nodes[i].map_operands(|o| cv[o as usize]);
                cv[i] = all.len() as Val;
                all.push(n);
                copy_of.push(c);
            }
            copy.push(cv);
        }
        let q = Prog {
            nodes: all,
            elem: p.elem,
            inputs: p.inputs,
            outputs: p.outputs.clone(),
            out_store: p.out_store.clone(),
        };
        Schedule { q, copy_of, inv, pre, body, copy }
    }

    /// The body's emission order for the first `copies` copies: each node
    /// of the body for every copy in turn (their operations interleaved).
    pub fn order(&self, copies: usize) -> Vec<usize> {
        self.body.iter().flat_map(|&i| self.copy[..copies].iter().map(move |cv| cv[i] as usize)).collect()
    }

    /// The values the first `copies` copies store, copy by copy per output.
    pub fn stored(&self, copies: usize) -> Vec<Val> {
        self.q.outputs.iter().flat_map(|&o| self.copy[..copies].iter().map(move |cv| cv[o as usize])).collect()
    }

    /// Per value, the last emission position reading it when the body runs
    /// in `order` after `pre` and then stores `stored` (at position
    /// `pre.len() + order.len()`); `usize::MAX` for invariant values that
    /// the loop reads or stores, which live through the loops (an invariant
    /// value read only before the loop, by other invariant ones, frees its
    /// register there).
    pub fn last_uses(&self, order: &[usize], stored: &[Val]) -> Vec<usize> {
        let mut last = vec![0usize; self.q.nodes.len()];
        let mut in_loop = vec![false; self.q.nodes.len()];
        for (pos, &i) in self.pre.iter().chain(order).enumerate() {
            for o in self.q.nodes[i].operands() {
                last[o as usize] = pos;
                in_loop[o as usize] |= pos >= self.pre.len();
            }
        }
        for &o in stored {
            last[o as usize] = self.pre.len() + order.len();
            in_loop[o as usize] = true;
        }
        for ((l, _), _) in last.iter_mut().zip(&self.inv).zip(&in_loop).filter(|((_, &inv), &used)| inv && used) {
            *l = usize::MAX;
        }
        last
    }

    /// The program's constants (bit patterns of its element type), in order
    /// of appearance.
    pub fn constants(&self) -> Vec<u64> {
        self.q.nodes.iter().filter_map(|n| if let Node::Const(b) = *n { Some(b) } else { None }).collect()
    }

    /// The lookup tables the program reads ([`Un::Lookup`]), each once.
    pub fn tables(&self) -> Vec<Table> {
        let mut t = vec![];
        for n in &self.q.nodes {
            if let Node::Un(Un::Lookup(table), _) = *n {
                if !t.contains(&table) {
                    t.push(table);
                }
            }
        }
        t
    }
}

/// Generated machine code with its constant pool.
pub struct Code {
    /// Executable mapping holding the code (kept alive for `entry`).
    _map: memmap2::Mmap,
    /// The constants the code reads through `r10` (kept alive for `entry`).
    _pool: Box<[PoolLine]>,
    entry: unsafe extern "sysv64" fn(*const *const f32, *const *mut f32, usize),
    inputs: usize,
    outputs: usize,
}

impl Code {
    /// Assembles the function in `a` (its code reading `pool` through
    /// `r10`, see [`prologue`]) into executable memory, and writes it to the
    /// directory named by `KILN_JIT_DUMP` when that is set.
    pub fn new(mut a: CodeAssembler, pool: Box<[PoolLine]>, inputs: usize, outputs: usize) -> Result<Code, NoCode> {
        let bytes = a.assemble(0)?;
        if let Ok(dir) = std::env::var("KILN_JIT_DUMP") {
            // A debugging aid: disassemble with `objdump -D -b binary -mi386:x86-64`.
            static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = std::fs::write(format!("{dir}/kernel-{seq}.bin"), &bytes) {
                log::warn!("KILN_JIT_DUMP: cannot write kernel {seq} to {dir}: {e}");
            }
        }
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).map_err(|_| NoCode)?;
        map.copy_from_slice(&bytes);
        let map = map.make_exec().map_err(|_| NoCode)?;
        // SAFETY: `map` holds the complete function just encoded, with the
        // System V calling convention (the prologue and epilogue above save
        // and restore the callee-saved registers and the stack pointer); it
        // lives as long as the returned `Code`, and so does `pool`.
        let entry = unsafe {
            std::mem::transmute::<*const u8, unsafe extern "sysv64" fn(*const *const f32, *const *mut f32, usize)>(
                map.as_ptr(),
            )
        };
        Ok(Code { _map: map, _pool: pool, entry, inputs, outputs })
    }

    /// Runs the code over `len` positions.
    ///
    /// # Safety
    /// See [`Kernel::run`](crate::backend::cpu::jit::Kernel::run).
    pub unsafe fn run(&self, ins: &[*const f32], outs: &[*mut f32], len: usize) {
        assert!(ins.len() == self.inputs && outs.len() == self.outputs, "one pointer per input and output");
        // SAFETY: `entry` points to code generated for this many inputs and
        // outputs, reading `len` elements through `ins` and writing through
        // `outs`; the caller guarantees those are valid.
        unsafe { (self.entry)(ins.as_ptr(), outs.as_ptr(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::jit::{Bin, Variant};
    use crate::backend::cpu::simd_math::{detected_level, Level};
    use crate::backend::cpu::{jit_avx2, jit_x86};

    /// `acc = x0; acc = acc * x_k + x_k` for the other inputs in turn (a
    /// multiplication, then an addition, each rounded), with the running
    /// value after every fourth input as an output.
    fn chain(n_in: usize) -> Prog {
        let mut nodes: Vec<Node> = (0..n_in).map(Node::Input).collect();
        let mut acc = 0;
        let mut outputs = Vec::new();
        for k in 1..n_in as Val {
            nodes.push(Node::Bin(Bin::Mul, acc, k));
            nodes.push(Node::Bin(Bin::Add, nodes.len() as Val - 1, k));
            acc = nodes.len() as Val - 1;
            if k % 4 == 0 {
                outputs.push(acc);
            }
        }
        outputs.push(acc);
        Prog::new(nodes, n_in, outputs)
    }

    #[test]
    fn any_number_of_inputs_and_outputs_with_broadcasts_in_no_register() {
        // 25 inputs (every third one broadcast) and 7 outputs: 24 pointers
        // for nine registers; the generators read the rest from their tables.
        let n_in = 25;
        let p = chain(n_in);
        let mut bcast = InputSet::EMPTY;
        for k in (2..n_in).step_by(3) {
            bcast.insert(k);
        }
        type Generate = fn(&Prog, Variant) -> Option<Code>;
        let mut gens: Vec<(&str, Generate)> = Vec::new();
        if detected_level() >= Level::Avx2 {
            gens.push(("avx2", jit_avx2::generate));
        }
        if detected_level() >= Level::Avx512 {
            gens.push(("avx512", jit_x86::generate));
        }
        for (name, generate) in gens {
            for prefetch in [0, 256] {
                let code = generate(&p, Variant { bcast, prefetch }).expect("code is generated");
                for n in [0, 1, 7, 16, 33, 100] {
                    let xs: Vec<Vec<f32>> = (0..n_in)
                        .map(|k| {
                            let len = if bcast.contains(k) { 1 } else { n };
                            (0..len).map(|i| 0.5 + ((i * 7 + k * 3) % 11) as f32 / 16.0).collect()
                        })
                        .collect();
                    let x = |k: usize, i: usize| if bcast.contains(k) { xs[k][0] } else { xs[k][i] };
                    let mut outs = vec![vec![f32::from_bits(0x7fc0_dead); n + 16]; p.outputs.len()];
                    let ins: Vec<*const f32> = xs.iter().map(|v| v.as_ptr()).collect();
                    let dst: Vec<*mut f32> = outs.iter_mut().map(|v| v.as_mut_ptr()).collect();
                    // SAFETY: each streamed input holds `n` elements, each
                    // broadcast one 1, each output `n + 16`, all apart.
                    unsafe { code.run(&ins, &dst, n) };
                    for i in 0..n {
                        let mut acc = x(0, i);
                        let mut want = Vec::new();
                        for k in 1..n_in {
                            acc = acc * x(k, i) + x(k, i);
                            if k % 4 == 0 {
                                want.push(acc);
                            }
                        }
                        want.push(acc);
                        for (j, (o, w)) in outs.iter().zip(&want).enumerate() {
                            assert_eq!(o[i].to_bits(), w.to_bits(), "{name}: output {j}, position {i} of {n}");
                        }
                    }
                    for o in &outs {
                        assert!(o[n..].iter().all(|v| v.to_bits() == 0x7fc0_dead), "{name}: nothing past {n}");
                    }
                }
            }
        }
    }
}
