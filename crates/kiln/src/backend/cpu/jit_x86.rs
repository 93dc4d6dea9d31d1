//! AVX-512 code generation for [`jit`](crate::backend::cpu::jit) programs.
//!
//! The generated function is `extern "sysv64" fn(ins: *const *const f32,
//! outs: *const *mut f32, len: usize)`. It keeps one pointer per input and
//! output in a general register, 16 lanes per vector in `zmm` registers,
//! and a lane mask in `k1` (all lanes, then the remainder on the last
//! iteration, so there is no scalar tail). The main loop computes two
//! vectors per iteration with their operations interleaved (see
//! [`generate`]); a one-vector loop finishes the last 31 positions or fewer.
//!
//! Registers are allocated in one pass over the SSA program: a value takes
//! a free register when it is defined and gives it back after its last use.
//! Values that depend on broadcast inputs and constants only are computed
//! once before the loop and keep their registers throughout. Constants live
//! in a pool addressed by `r10` and are read as embedded broadcasts
//! (`{1to16}`) where the instruction allows a memory operand. A program that
//! needs more than the 31 vector or 6 mask registers is not compiled (it
//! runs on the interpreter); no spilling.

use std::collections::HashMap;

use iced_x86::code_asm::*;

use crate::backend::cpu::jit::{Bin, Node, Pred, Prog, Un, Val, Variant};

/// Generated machine code with its constant pool.
pub struct Code {
    /// Executable mapping holding the code (kept alive for `entry`).
    _map: memmap2::Mmap,
    /// The constants the code reads through `r10` (kept alive for `entry`).
    _pool: Box<[u32]>,
    entry: unsafe extern "sysv64" fn(*const *const f32, *const *mut f32, usize),
    inputs: usize,
    outputs: usize,
}

impl Code {
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

/// Vector registers by number.
const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17,
    zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];
/// Mask registers by number (`k0` cannot mask, `k1` is the loop mask).
const K: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];
/// General registers holding the input, then output, pointers.
const PTRS: [AsmRegister64; crate::backend::cpu::jit::MAX_PTRS] = [r8, r9, r12, r13, r14, r15, rbx, rbp, rdi, rsi, rdx];

/// `r` written under mask `k` (blend).
fn masked(r: AsmRegisterZmm, k: usize) -> AsmRegisterZmm {
    match k {
        1 => r.k1(),
        2 => r.k2(),
        3 => r.k3(),
        4 => r.k4(),
        5 => r.k5(),
        6 => r.k6(),
        _ => r.k7(),
    }
}

fn pred_imm(p: Pred) -> i32 {
    match p {
        Pred::Eq => 0x00,    // EQ_OQ
        Pred::Unord => 0x03, // UNORD_Q
        Pred::Lt => 0x11,    // LT_OQ
        Pred::Ge => 0x1D,    // GE_OQ
        Pred::Gt => 0x1E,    // GT_OQ
    }
}

/// Where a value is.
#[derive(Clone, Copy)]
enum Loc {
    /// Not computed (yet, or ever: dead).
    None,
    /// A constant, in the pool.
    Pool,
    /// A vector register.
    Z(usize),
    /// A mask register.
    K(usize),
}

/// An operand as an instruction reads it.
#[derive(Clone, Copy)]
enum Opnd {
    Reg(AsmRegisterZmm),
    Mem(AsmMemoryOperand),
}

/// Code generation failed: out of registers (or an assembler error).
struct NoCode;

impl From<IcedError> for NoCode {
    fn from(_: IcedError) -> NoCode {
        NoCode
    }
}

struct Gen<'a> {
    p: &'a Prog,
    /// Per value, how many bytes past the loop position its inputs are
    /// read: 64 for the unrolled loop's second copy of the body (the next
    /// 16 lanes), 128 for the third, ...; 0 for the program's own values.
    disp: Vec<i32>,
    a: CodeAssembler,
    loc: Vec<Loc>,
    /// Last position (in emission order) reading each value; `usize::MAX`
    /// for values that must live through the loop.
    last: Vec<usize>,
    free_z: Vec<usize>,
    free_k: Vec<usize>,
    pool_at: HashMap<u32, usize>,
}

impl Gen<'_> {
    /// The pool slot of a constant (every constant is pooled before emission).
    fn slot(&self, bits: u32) -> i32 {
        4 * self.pool_at[&bits] as i32
    }

    /// A constant as an embedded-broadcast memory operand.
    fn pool_mem(&self, bits: u32) -> AsmMemoryOperand {
        dword_bcst(r10 + self.slot(bits))
    }

    fn take_z(&mut self) -> Result<usize, NoCode> {
        self.free_z.pop().ok_or(NoCode)
    }

    fn take_k(&mut self) -> Result<usize, NoCode> {
        self.free_k.pop().ok_or(NoCode)
    }

    fn opnd(&self, v: Val) -> Opnd {
        match self.loc[v as usize] {
            Loc::Z(r) => Opnd::Reg(ZMM[r]),
            Loc::Pool => match self.p.nodes[v as usize] {
                Node::Const(bits) => Opnd::Mem(self.pool_mem(bits)),
                _ => unreachable!("only constants live in the pool"),
            },
            Loc::K(_) | Loc::None => unreachable!("operands are computed vectors"),
        }
    }

    /// `v` in a vector register; constants are loaded into a temporary,
    /// returned in `temps` to be freed after the instruction.
    fn reg(&mut self, v: Val, temps: &mut Vec<usize>) -> Result<AsmRegisterZmm, NoCode> {
        match self.opnd(v) {
            Opnd::Reg(r) => Ok(r),
            Opnd::Mem(_) => {
                let t = self.take_z()?;
                temps.push(t);
                let Node::Const(bits) = self.p.nodes[v as usize] else { unreachable!("only constants are in memory") };
                self.a.vbroadcastss(ZMM[t], dword_ptr(r10 + self.slot(bits)))?;
                Ok(ZMM[t])
            }
        }
    }

    fn kreg(&self, v: Val) -> usize {
        match self.loc[v as usize] {
            Loc::K(k) => k,
            _ => unreachable!("mask operands are in mask registers"),
        }
    }

    /// Releases the registers of `vals` read for the last time at `pos`.
    fn release(&mut self, vals: &[Val], pos: usize) {
        for &v in vals {
            if self.last[v as usize] != pos {
                continue;
            }
            match self.loc[v as usize] {
                Loc::Z(r) => self.free_z.push(r),
                Loc::K(k) => self.free_k.push(k),
                // Constants stay in the pool; a value read twice by one
                // node (or taken over by it) is already released.
                _ => continue,
            }
            self.loc[v as usize] = Loc::None;
        }
    }

    /// Emits node `v` at emission position `pos`.
    fn node(&mut self, v: Val, pos: usize, bcast: u64) -> Result<(), NoCode> {
        let n = self.p.nodes[v as usize];
        let ops = n.operands();
        let mut temps = Vec::new();
        match n {
            Node::Const(_) => unreachable!("constants are not emitted"),
            Node::Input(k) => {
                let d = self.take_z()?;
                let disp = self.disp[v as usize];
                if bcast >> k & 1 == 1 {
                    self.a.vbroadcastss(ZMM[d], dword_ptr(PTRS[k]))?;
                } else {
                    self.a.vmovups(ZMM[d].k1().z(), zmmword_ptr(PTRS[k] + rax + disp))?;
                }
                self.loc[v as usize] = Loc::Z(d);
            }
            Node::Bin(op, x, y) => {
                let commutes = matches!(op, Bin::Add | Bin::Mul | Bin::And | Bin::Xor | Bin::IAdd);
                let (x, y) = match (self.loc[x as usize], commutes) {
                    (Loc::Pool, true) => (y, x),
                    _ => (x, y),
                };
                let s1 = self.reg(x, &mut temps)?;
                let s2 = self.opnd(y);
                self.free(&temps, &ops, pos);
                let d = self.take_z()?;
                let dz = ZMM[d];
                macro_rules! e {
                    ($m:ident) => {
                        match s2 {
                            Opnd::Reg(r) => self.a.$m(dz, s1, r)?,
                            Opnd::Mem(m) => self.a.$m(dz, s1, m)?,
                        }
                    };
                }
                match op {
                    Bin::Add => e!(vaddps),
                    Bin::Sub => e!(vsubps),
                    Bin::Mul => e!(vmulps),
                    Bin::Div => e!(vdivps),
                    Bin::Min => e!(vminps),
                    Bin::Max => e!(vmaxps),
                    Bin::And => e!(vpandd),
                    Bin::Xor => e!(vpxord),
                    Bin::IAdd => e!(vpaddd),
                    Bin::Scalef => e!(vscalefps),
                }
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
            Node::Fma(x, y, z) => {
                // The product commutes: put a constant factor second.
                let (x, y) = match self.loc[x as usize] {
                    Loc::Pool => (y, x),
                    _ => (x, y),
                };
                let y_const = matches!(self.loc[y as usize], Loc::Pool);
                let z_const = matches!(self.loc[z as usize], Loc::Pool);
                // 213: d = y * d + z (d = x); 132: d = d * y + z (d = x).
                let use132 = y_const && !z_const;
                let xr = self.reg(x, &mut temps)?;
                let (src2, mem) = if use132 {
                    (self.reg(z, &mut temps)?, self.opnd(y))
                } else {
                    (self.reg(y, &mut temps)?, self.opnd(z))
                };
                // The destination overwrites `x`: take its register when this
                // is `x`'s last use (and `x` is no other operand), else copy.
                let x_dies = self.last[x as usize] == pos && y != x && z != x;
                let d = match self.loc[x as usize] {
                    Loc::Z(r) if x_dies => {
                        self.loc[x as usize] = Loc::None;
                        r
                    }
                    _ => {
                        let d = self.take_z()?;
                        self.a.vmovaps(ZMM[d], xr)?;
                        d
                    }
                };
                let dz = ZMM[d];
                match (use132, mem) {
                    (true, Opnd::Reg(r)) => self.a.vfmadd132ps(dz, src2, r)?,
                    (true, Opnd::Mem(m)) => self.a.vfmadd132ps(dz, src2, m)?,
                    (false, Opnd::Reg(r)) => self.a.vfmadd213ps(dz, src2, r)?,
                    (false, Opnd::Mem(m)) => self.a.vfmadd213ps(dz, src2, m)?,
                }
                self.free(&temps, &ops, pos);
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
            Node::Un(op, x) => {
                let s = self.reg(x, &mut temps)?;
                self.free(&temps, &ops, pos);
                let d = self.take_z()?;
                let dz = ZMM[d];
                match op {
                    Un::Sqrt => self.a.vsqrtps(dz, s)?,
                    Un::Rcp14 => self.a.vrcp14ps(dz, s)?,
                    Un::Round => self.a.vrndscaleps(dz, s, 0x08)?,
                    Un::Floor => self.a.vrndscaleps(dz, s, 0x09)?,
                    Un::Ceil => self.a.vrndscaleps(dz, s, 0x0A)?,
                    Un::Sra23 => {
                        self.a.vpsrad(dz, s, 23)?;
                        self.a.vcvtdq2ps(dz, dz)?;
                    }
                    Un::Pow2i => {
                        self.a.vcvtps2dq(dz, s)?;
                        self.a.vpaddd(dz, dz, self.pool_mem(127))?;
                        self.a.vpslld(dz, dz, 23)?;
                    }
                }
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
            Node::Cmp(p, x, y) => {
                let s1 = self.reg(x, &mut temps)?;
                let s2 = self.opnd(y);
                self.free(&temps, &ops, pos);
                let k = self.take_k()?;
                match s2 {
                    Opnd::Reg(r) => self.a.vcmpps(K[k], s1, r, pred_imm(p))?,
                    Opnd::Mem(m) => self.a.vcmpps(K[k], s1, m, pred_imm(p))?,
                }
                self.loc[v as usize] = Loc::K(k);
                return Ok(());
            }
            Node::MaskAnd(x, y) | Node::MaskOr(x, y) => {
                let (kx, ky) = (self.kreg(x), self.kreg(y));
                self.free(&temps, &ops, pos);
                let k = self.take_k()?;
                if matches!(n, Node::MaskAnd(..)) {
                    self.a.kandw(K[k], K[kx], K[ky])?;
                } else {
                    self.a.korw(K[k], K[kx], K[ky])?;
                }
                self.loc[v as usize] = Loc::K(k);
                return Ok(());
            }
            Node::Blend(m, x, y) => {
                // d = m ? x : y: vblendmps d{m}, y, x.
                let km = self.kreg(m);
                let sy = self.reg(y, &mut temps)?;
                let sx = self.opnd(x);
                self.free(&temps, &ops, pos);
                let d = self.take_z()?;
                let dz = masked(ZMM[d], km);
                match sx {
                    Opnd::Reg(r) => self.a.vblendmps(dz, sy, r)?,
                    Opnd::Mem(mm) => self.a.vblendmps(dz, sy, mm)?,
                }
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
        }
        self.release(&ops, pos);
        Ok(())
    }

    /// Frees temporaries and the operands read for the last time.
    fn free(&mut self, temps: &[usize], ops: &[Val], pos: usize) {
        self.free_z.extend_from_slice(temps);
        self.release(ops, pos);
    }
}

/// Compiles `p` for broadcast pattern `bcast`, or `None` when it needs more
/// registers than there are. The loop computes two vectors (32 lanes) per
/// iteration, their operations interleaved, while at least 32 positions
/// remain, then one vector at a time: a long chain such as `tanh` is a
/// sequence of dependent operations, and the second vector's independent
/// ones fill the first one's latencies. When the two copies need more
/// registers than there are, the loop computes one vector per iteration.
pub fn generate(p: &Prog, v: Variant) -> Option<Code> {
    UNROLL.into_iter().find_map(|copies| emit(p, v, copies).ok())
}

/// Vectors per iteration of the main loop, tried in order (two hide the
/// latency of a dependent chain; four were measured no faster and need
/// twice the registers).
const UNROLL: [usize; 2] = [2, 1];

fn emit(p: &Prog, v: Variant, copies: usize) -> Result<Code, NoCode> {
    let bcast = v.bcast;
    let (n_in, n_out) = (p.inputs, p.outputs.len());
    let nodes = &p.nodes;
    // Loop-invariant values: broadcast inputs, constants and what only they feed.
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
    // Emission order: invariant values first (before the loop), then the body.
    let pre: Vec<usize> =
        (0..nodes.len()).filter(|&i| live[i] && inv[i] && !matches!(nodes[i], Node::Const(_))).collect();
    let body: Vec<usize> = (0..nodes.len()).filter(|&i| live[i] && !inv[i]).collect();
    // The unrolled body's copies: `copy[c][i]` computes value `i` for the
    // lanes 16 * c further on (invariant values are their own copies).
    let unroll = copies > 1;
    let mut all = nodes.clone();
    let mut disp = vec![0i32; nodes.len()];
    let mut copy: Vec<Vec<Val>> = vec![(0..nodes.len() as Val).collect()];
    for c in 1..copies {
        let mut cv: Vec<Val> = (0..nodes.len() as Val).collect();
        for &i in &body {
            let n = nodes[i].map_operands(|o| cv[o as usize]);
            cv[i] = all.len() as Val;
            all.push(n);
            disp.push(64 * c as i32);
        }
        copy.push(cv);
    }
    let q = Prog { nodes: all, inputs: p.inputs, outputs: p.outputs.clone() };
    // Last reads of each value for an emission order (after `pre`) and the
    // values it stores; invariant values live through the loops.
    let last_uses = |order: &[usize], stored: &[Val]| -> Vec<usize> {
        let mut last = vec![0usize; q.nodes.len()];
        for (pos, &i) in pre.iter().chain(order).enumerate() {
            for o in q.nodes[i].operands() {
                last[o as usize] = pos;
            }
        }
        for &o in stored {
            last[o as usize] = pre.len() + order.len();
        }
        for (l, _) in last.iter_mut().zip(&inv).filter(|(_, &x)| x) {
            *l = usize::MAX;
        }
        last
    };
    let pair_order: Vec<usize> = body.iter().flat_map(|&i| copy.iter().map(move |cv| cv[i] as usize)).collect();
    let last_one = last_uses(&body, &p.outputs);
    let last_pair = if unroll {
        let stored: Vec<Val> = copy.iter().flat_map(|cv| p.outputs.iter().map(|&o| cv[o as usize])).collect();
        last_uses(&pair_order, &stored)
    } else {
        last_one.clone()
    };
    let loc = q.nodes.iter().map(|n| if matches!(n, Node::Const(_)) { Loc::Pool } else { Loc::None }).collect();
    // The constant pool: every constant of the program, and the exponent bias.
    let mut pool: Vec<u32> =
        nodes.iter().filter_map(|n| if let Node::Const(b) = *n { Some(b) } else { None }).collect();
    pool.push(127);
    let pool = pool.into_boxed_slice();
    let mut pool_at = HashMap::new();
    for (i, &b) in pool.iter().enumerate() {
        pool_at.entry(b).or_insert(i);
    }
    let mut g = Gen {
        p: &q,
        disp,
        a: CodeAssembler::new(64)?,
        loc,
        last: last_pair,
        free_z: (0..32).rev().collect(),
        free_k: (2..8).rev().collect(),
        pool_at,
    };
    // Prologue: save callee-saved registers, load the pointers and the pool.
    for r in [rbx, rbp, r12, r13, r14, r15] {
        g.a.push(r)?;
    }
    g.a.mov(rcx, rdx)?;
    g.a.mov(rax, rdi)?;
    g.a.mov(r11, rsi)?;
    for (k, &r) in PTRS[..n_in + n_out].iter().enumerate() {
        let (table, i) = if k < n_in { (rax, k) } else { (r11, k - n_in) };
        g.a.mov(r, qword_ptr(table + (8 * i) as i32))?;
    }
    g.a.mov(r10, pool.as_ptr() as u64)?;
    for (pos, &i) in pre.iter().enumerate() {
        g.node(i as Val, pos, bcast)?;
    }
    g.a.mov(r11d, 0xffff)?;
    g.a.kmovw(k1, r11d)?;
    g.a.xor(eax, eax)?;
    // One iteration over `copies.len()` vectors: prefetch, the nodes in
    // `order`, then each copy's outputs, 64 bytes apart.
    let iteration = |g: &mut Gen, order: &[usize], copies: &[Vec<Val>]| -> Result<(), NoCode> {
        if v.prefetch != 0 {
            for k in (0..n_in).filter(|&k| bcast >> k & 1 == 0) {
                for l in 0..copies.len() as i32 {
                    g.a.prefetcht0(byte_ptr(PTRS[k] + rax + (v.prefetch + 64 * l)))?;
                }
            }
        }
        for (pos, &i) in order.iter().enumerate() {
            g.node(i as Val, pre.len() + pos, bcast)?;
        }
        for (j, &o) in p.outputs.iter().enumerate() {
            for (c, cv) in copies.iter().enumerate() {
                let mut temps = Vec::new();
                let r = g.reg(cv[o as usize], &mut temps)?;
                g.a.vmovups(zmmword_ptr(PTRS[n_in + j] + rax + 64 * c as i32).k1(), r)?;
                g.free_z.extend_from_slice(&temps);
            }
        }
        Ok(())
    };
    let mut top = g.a.create_label();
    let mut body_l = g.a.create_label();
    let mut done = g.a.create_label();
    if unroll {
        // `copies` vectors per iteration while that many remain (all
        // lanes), then the one-vector loop at `top`.
        let after_pre = (g.loc.clone(), g.free_z.clone(), g.free_k.clone());
        let mut pairs = g.a.create_label();
        g.a.set_label(&mut pairs)?;
        g.a.cmp(rcx, 16 * copies as i32)?;
        g.a.jb(top)?;
        iteration(&mut g, &pair_order, &copy)?;
        g.a.add(rax, 64 * copies as i32)?;
        g.a.sub(rcx, 16 * copies as i32)?;
        g.a.jmp(pairs)?;
        (g.loc, g.free_z, g.free_k) = after_pre;
        g.last = last_one;
    }
    g.a.set_label(&mut top)?;
    g.a.cmp(rcx, 16)?;
    g.a.jae(body_l)?;
    g.a.test(rcx, rcx)?;
    g.a.je(done)?;
    g.a.mov(r11d, 1)?;
    g.a.shl(r11d, cl)?;
    g.a.dec(r11d)?;
    g.a.kmovw(k1, r11d)?;
    g.a.set_label(&mut body_l)?;
    iteration(&mut g, &body, &copy[..1])?;
    g.a.add(rax, 64)?;
    g.a.sub(rcx, 16)?;
    g.a.ja(top)?;
    g.a.set_label(&mut done)?;
    g.a.vzeroupper()?;
    for r in [r15, r14, r13, r12, rbp, rbx] {
        g.a.pop(r)?;
    }
    g.a.ret()?;

    let bytes = g.a.assemble(0)?;
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
    // System V calling convention (callee-saved registers restored, no stack
    // use beyond the pushes); it lives as long as the returned `Code`.
    let entry = unsafe {
        std::mem::transmute::<*const u8, unsafe extern "sysv64" fn(*const *const f32, *const *mut f32, usize)>(
            map.as_ptr(),
        )
    };
    Ok(Code { _map: map, _pool: pool, entry, inputs: n_in, outputs: n_out })
}
