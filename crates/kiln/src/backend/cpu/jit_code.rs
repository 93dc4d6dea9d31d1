//! What the two x86 code generators ([`jit_x86`](crate::backend::cpu::jit_x86)
//! for AVX-512, [`jit_avx2`](crate::backend::cpu::jit_avx2) for AVX2 + FMA)
//! share: the generated function's calling convention, the loop schedule of
//! a program (which values are computed before the loop, which in it, and
//! the unrolled copies of the body) and the executable code itself.
//!
//! The generated function is `extern "sysv64" fn(ins: *const *const f32,
//! outs: *const *mut f32, len: usize)`. Its prologue keeps one pointer per
//! input and output in a general register ([`PTRS`]), the count of
//! positions left in `rcx` and the constant pool's address in `r10`; `rax`
//! is the byte offset of the current position and `r11` a scratch register.

use iced_x86::code_asm::*;

use crate::backend::cpu::jit::{Node, Pred, Prog, Val};

/// General registers holding the input, then output, pointers.
pub const PTRS: [AsmRegister64; crate::backend::cpu::jit::MAX_PTRS] =
    [r8, r9, r12, r13, r14, r15, rbx, rbp, rdi, rsi, rdx];

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
/// width, and `$scalef` is the expression for `Bin::Scalef`. Evaluates to
/// the assembler's result.
macro_rules! emit_bin {
    ($a:expr, $op:expr, $d:expr, $s1:expr, $s2:expr, $and:ident, $xor:ident, $scalef:expr) => {{
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
            Bin::IAdd => emit3!($a, vpaddd, $d, $s1, $s2),
            Bin::Scalef => $scalef,
        }
    }};
}
pub(crate) use emit_bin;

/// Whether a [`Bin`](crate::backend::cpu::jit::Bin) operation's operands
/// may be swapped (to put the one in memory second).
pub fn commutes(op: crate::backend::cpu::jit::Bin) -> bool {
    use crate::backend::cpu::jit::Bin;
    matches!(op, Bin::Add | Bin::Mul | Bin::And | Bin::Xor | Bin::IAdd)
}

/// The `vcmpps` immediate of a predicate (ordered, non-signalling).
pub fn pred_imm(p: Pred) -> i32 {
    match p {
        Pred::Eq => 0x00,    // EQ_OQ
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

/// Saves the callee-saved registers, loads the pointers of `n_in` inputs
/// and `n_out` outputs into [`PTRS`], the length into `rcx` and `pool`'s
/// address into `r10`.
pub fn prologue(a: &mut CodeAssembler, n_in: usize, n_out: usize, pool: &[PoolLine]) -> Result<(), IcedError> {
    for r in SAVED {
        a.push(r)?;
    }
    a.mov(rcx, rdx)?;
    a.mov(rax, rdi)?;
    a.mov(r11, rsi)?;
    for (k, &r) in PTRS[..n_in + n_out].iter().enumerate() {
        let (table, i) = if k < n_in { (rax, k) } else { (r11, k - n_in) };
        a.mov(r, qword_ptr(table + (8 * i) as i32))?;
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
    /// The schedule of `p` for broadcast pattern `bcast` (bit `k`: input `k`
    /// is broadcast) with `copies` copies of the body per iteration.
    pub fn new(p: &Prog, bcast: u64, copies: usize) -> Schedule {
        let nodes = &p.nodes;
        let mut inv = vec![false; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            inv[i] = match *n {
                Node::Input(k) => bcast >> k & 1 == 1,
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
        let q = Prog { nodes: all, inputs: p.inputs, outputs: p.outputs.clone() };
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
    /// `pre.len() + order.len()`); `usize::MAX` for invariant values, which
    /// live through the loops.
    pub fn last_uses(&self, order: &[usize], stored: &[Val]) -> Vec<usize> {
        let mut last = vec![0usize; self.q.nodes.len()];
        for (pos, &i) in self.pre.iter().chain(order).enumerate() {
            for o in self.q.nodes[i].operands() {
                last[o as usize] = pos;
            }
        }
        for &o in stored {
            last[o as usize] = self.pre.len() + order.len();
        }
        for (l, _) in last.iter_mut().zip(&self.inv).filter(|(_, &x)| x) {
            *l = usize::MAX;
        }
        last
    }

    /// The program's constants, in order of appearance.
    pub fn constants(&self) -> Vec<u32> {
        self.q.nodes.iter().filter_map(|n| if let Node::Const(b) = *n { Some(b) } else { None }).collect()
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
