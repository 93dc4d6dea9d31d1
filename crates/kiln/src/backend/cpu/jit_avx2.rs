//! AVX2 + FMA code generation for [`jit`](crate::backend::cpu::jit)
//! programs, for x86-64 CPUs without AVX-512 (most AMD CPUs before Zen 4,
//! many Intel client CPUs).
//!
//! The generated function (calling convention in
//! [`jit_code`]) keeps 8 lanes per vector in
//! `ymm` registers (`f32` or `i32`; 4 of an `f64` program, whose nodes are
//! emitted as the `pd` forms, and whose 64-bit arithmetic shift, missing
//! from AVX2, is a logical one with its sign extended by an xor and a
//! subtraction). AVX2 has no mask registers: a comparison makes a lane
//! mask in a vector register (all ones or zeros per lane), selections are
//! `vblendvps`, and mask logic is `vandps`/`vorps`. The main loop computes
//! two vectors per iteration with unmasked loads and stores, a
//! one-vector loop follows, and the last partial vector (1 to 7 positions)
//! is read and written with `vmaskmovps` under a lane mask kept in `ymm15`:
//! masked-off lanes are neither read nor written, so the kernel never
//! touches memory past `len` elements. AVX2 has no masked load or store of
//! bytes or 16-bit words: in that last vector a `bool` or 16-bit float
//! input is first copied (its `len % 8` elements, `rep movsb`) into a
//! zeroed stack slot and read from there, and such an output is written to
//! a slot and its valid elements copied out. A `bool` input's bytes are
//! widened (`vpmovzxbd`, or `vpmovzxbq` to an `f64` program's lanes) and
//! compared with zero; a `bool` output's mask is packed to bytes 0 or 1;
//! `float16` goes through F16C (`vcvtph2ps`, `vcvtps2ph`), `bfloat16`
//! through shifts and the integer rounding of `bf16::from_f32`.
//!
//! Constants live in a pool addressed by `r10`, each repeated in 8 lanes,
//! and are read as 32-byte memory operands (AVX2 has no embedded
//! broadcast). With 16 registers, long chains such as `gelu` with `tanh` or
//! `erf` need more than there are, so the allocator spills: registers are
//! given to values as they are defined and back after their last use; when
//! none is free, the value whose next use is furthest away (Belady's rule)
//! is stored to a 32-byte stack slot (once: values never change) and read
//! from there again, usually as an instruction's memory operand. Values
//! computed before the loop (from broadcast inputs and constants only) are
//! kept in stack slots during the loop and read from there like constants,
//! so every iteration starts with all registers free.

use std::collections::HashMap;

use iced_x86::code_asm::*;

use crate::backend::cpu::jit::{Elem, Half, InputSet, Node, Pred, Prog, Store, Un, Val, Variant};
use crate::backend::cpu::jit_code::{
    self, emit3, emit_bin, emit_bin_f64, pred_imm, Code, NoCode, Opnd, Ptrs, Schedule,
};
use crate::backend::cpu::simd_math::Table;

/// Vector registers by number.
const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
/// Their lower halves.
const XMM: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// The register holding the lane mask of the last, partial vector.
const MASK: usize = 15;

/// Bytes per vector (and per constant of the pool, and per stack slot).
const VB: i32 = 32;

/// Vectors per iteration of the main loop. Two interleave a second
/// vector's independent operations with the first one's dependent chain:
/// in cache, long chains (gelu, sigmoid) run faster than with one,
/// although two copies spill more.
const UNROLL: usize = 2;

/// Where a value is kept in memory.
#[derive(Clone, Copy)]
enum Home {
    /// In the constant pool, at this byte offset from `r10`.
    Pool(i32),
    /// In a stack slot, at this byte offset from `rsp`.
    Stack(i32),
}

fn mem(h: Home) -> AsmMemoryOperand {
    match h {
        Home::Pool(o) => ymmword_ptr(r10 + o),
        Home::Stack(o) => ymmword_ptr(rsp + o),
    }
}

/// Where each value is: restored at the top of every loop.
#[derive(Clone)]
struct State {
    /// Per value, the register holding it.
    reg_of: Vec<Option<usize>>,
    /// Per value, its copy in memory.
    home: Vec<Option<Home>>,
    /// Per register, the value it holds.
    holds: [Option<Val>; 16],
    /// Stack slots given back (byte offsets).
    free_slots: Vec<i32>,
    /// The next stack slot never used yet.
    next_slot: i32,
}

struct Gen<'a> {
    s: &'a Schedule,
    /// Per value, how many bytes past the loop position its input is read.
    disp: Vec<i32>,
    a: CodeAssembler,
    st: State,
    /// Registers the allocator may use (the mask takes the last one in the tail).
    nregs: usize,
    /// Per value, the emission positions reading it, ascending.
    uses: Vec<Vec<usize>>,
    /// Per value, the last position reading it (`usize::MAX`: never dies).
    last: Vec<usize>,
    /// Bytes of stack slots used at most.
    frame_used: i32,
    /// Byte offsets of constants in the pool (by their bits).
    pool_at: HashMap<u64, i32>,
    /// Byte offsets of the lookup tables in the pool (32 bytes each).
    table_at: HashMap<Table, i32>,
    /// Whether the program's lanes are `f64` (4 a vector; else 32-bit, 8).
    wide: bool,
    bcast: InputSet,
    /// Where the input and output pointers are.
    ptrs: Ptrs,
    /// Inputs and outputs move under the lane mask in `ymm15`.
    masked: bool,
    /// Per input or output of bytes or 16-bit floats (inputs, then
    /// outputs, as [`Ptrs`] numbers them), its bounce slot: in the last,
    /// partial vector it is read from and written to this stack slot,
    /// which holds a whole vector's worth (AVX2 has no masked load or
    /// store of bytes or words).
    bounce: HashMap<usize, i32>,
}

/// The value held by a register taken as a temporary (never an operand).
const TEMP: Val = Val::MAX;

impl Gen<'_> {
    /// Sets the uses of each value for the body in `order` (after the values
    /// computed before the loop), storing `stored` at the end.
    fn plan(&mut self, order: &[usize], stored: &[Val]) {
        let s = self.s;
        self.uses = vec![Vec::new(); s.q.nodes.len()];
        for (pos, &i) in s.pre.iter().chain(order).enumerate() {
            for o in s.q.nodes[i].operands() {
                self.uses[o as usize].push(pos);
            }
        }
        for &o in stored {
            self.uses[o as usize].push(s.pre.len() + order.len());
        }
        self.last = s.last_uses(order, stored);
    }

    /// The next position at or after `pos` reading `v` (`usize::MAX`: none
    /// in this iteration).
    fn next_use(&self, v: Val, pos: usize) -> usize {
        let u = &self.uses[v as usize];
        u.get(u.partition_point(|&p| p < pos)).copied().unwrap_or(usize::MAX)
    }

    fn take_slot(&mut self) -> i32 {
        self.st.free_slots.pop().unwrap_or_else(|| {
            let s = self.st.next_slot;
            self.st.next_slot += VB;
            self.frame_used = self.frame_used.max(self.st.next_slot);
            s
        })
    }

    /// A free register, spilling the value used furthest ahead (not one in
    /// `pinned`) when there is none.
    fn alloc(&mut self, pos: usize, pinned: &[usize]) -> Result<usize, NoCode> {
        if let Some(r) = (0..self.nregs).find(|&r| self.st.holds[r].is_none()) {
            return Ok(r);
        }
        let victim = (0..self.nregs)
            .filter(|r| !pinned.contains(r))
            .max_by_key(|&r| {
                let v = self.st.holds[r].expect("all registers are taken");
                (self.next_use(v, pos), self.st.home[v as usize].is_some())
            })
            .ok_or(NoCode)?;
        let v = self.st.holds[victim].expect("all registers are taken") as usize;
        if self.st.home[v].is_none() {
            let slot = self.take_slot();
            self.a.vmovaps(ymmword_ptr(rsp + slot), YMM[victim])?;
            self.st.home[v] = Some(Home::Stack(slot));
        }
        self.st.reg_of[v] = None;
        self.st.holds[victim] = None;
        Ok(victim)
    }

    /// A register for a temporary, pinned (released by [`Gen::untemp`]).
    fn temp(&mut self, pos: usize, pinned: &mut Vec<usize>) -> Result<usize, NoCode> {
        let r = self.alloc(pos, pinned)?;
        self.st.holds[r] = Some(TEMP);
        pinned.push(r);
        Ok(r)
    }

    fn untemp(&mut self, r: usize) {
        self.st.holds[r] = None;
    }

    /// Runs `f` with `rax` the byte offset of the position in an array of
    /// `size`-byte elements (it is the `f32` one), and the address of
    /// pointer `k` (inputs, then outputs) at this position plus the
    /// copy's `disp` (in `f32` bytes), or its bounce slot in the partial
    /// vector.
    fn narrow_at<R>(
        &mut self,
        k: usize,
        size: u32,
        disp: i32,
        f: impl FnOnce(&mut Self, AsmMemoryOperand) -> Result<R, NoCode>,
    ) -> Result<R, NoCode> {
        if self.masked {
            let slot = self.bounce[&k];
            return f(self, qword_ptr(rsp + slot));
        }
        let ptr = self.ptrs.get(&mut self.a, k)?;
        let shift = self.narrow_shift(size);
        self.a.shr(rax, shift)?;
        let r = f(self, qword_ptr(ptr + rax + (disp >> shift)));
        self.a.shl(rax, shift)?;
        r
    }

    /// Copies `rcx` elements of `size` bytes between pointer `k`'s array at
    /// the position and its bounce slot (in: to the slot, after zeroing
    /// it; else: from it).
    fn bounce_copy(&mut self, k: usize, size: u32, into_slot: bool) -> Result<(), NoCode> {
        let slot = self.bounce[&k];
        if into_slot {
            self.a.vxorps(YMM[0], YMM[0], YMM[0])?;
            self.a.vmovups(ymmword_ptr(rsp + slot), YMM[0])?;
        }
        let ptr = self.ptrs.get(&mut self.a, k)?;
        let shift = self.narrow_shift(size);
        for r in [rsi, rdi, rcx] {
            self.a.push(r)?;
        }
        let (array, stack) = if into_slot { (rsi, rdi) } else { (rdi, rsi) };
        self.a.mov(array, rax)?;
        self.a.shr(array, shift)?;
        self.a.add(array, ptr)?;
        self.a.lea(stack, qword_ptr(rsp + (slot + 24)))?;
        if size == 2 {
            self.a.shl(rcx, 1)?;
        }
        self.a.rep().movsb()?;
        for r in [rcx, rdi, rsi] {
            self.a.pop(r)?;
        }
        Ok(())
    }

    /// The shift from `rax`, the byte offset of a position among the
    /// program's elements (4 or 8 bytes), to its offset among elements of
    /// `size` bytes (1 or 2).
    fn narrow_shift(&self, size: u32) -> u32 {
        let elem = if self.wide { 3 } else { 2 };
        elem - size.trailing_zeros()
    }

    fn define(&mut self, v: Val, r: usize) {
        self.st.holds[r] = Some(v);
        self.st.reg_of[v as usize] = Some(r);
    }

    /// `v` in a register (loaded from its home when it is not), added to `pinned`.
    fn load(&mut self, v: Val, pos: usize, pinned: &mut Vec<usize>) -> Result<AsmRegisterYmm, NoCode> {
        let r = match self.st.reg_of[v as usize] {
            Some(r) => r,
            None => {
                let h = self.st.home[v as usize].expect("a computed value is in a register or in memory");
                let r = self.alloc(pos, pinned)?;
                self.a.vmovaps(YMM[r], mem(h))?;
                self.define(v, r);
                r
            }
        };
        pinned.push(r);
        Ok(YMM[r])
    }

    /// `v` as an operand that may be in memory (a register one is pinned).
    fn opnd(&self, v: Val, pinned: &mut Vec<usize>) -> Opnd<AsmRegisterYmm> {
        match self.st.reg_of[v as usize] {
            Some(r) => {
                pinned.push(r);
                Opnd::Reg(YMM[r])
            }
            None => Opnd::Mem(mem(self.st.home[v as usize].expect("a computed value is in a register or in memory"))),
        }
    }

    fn in_reg(&self, v: Val) -> bool {
        self.st.reg_of[v as usize].is_some()
    }

    /// Frees the registers of the operands read for the last time at `pos`;
    /// returns their stack slots, to be freed after the instruction (which
    /// may still read them).
    fn retire(&mut self, ops: &[Val], pos: usize) -> Vec<i32> {
        let mut slots = Vec::new();
        for &v in ops {
            if self.last[v as usize] != pos {
                continue;
            }
            if let Some(r) = self.st.reg_of[v as usize].take() {
                self.st.holds[r] = None;
            }
            if let Some(Home::Stack(o)) = self.st.home[v as usize].take() {
                slots.push(o);
            }
        }
        slots
    }

    /// Emits node `v` at emission position `pos`.
    fn node(&mut self, v: Val, pos: usize) -> Result<(), NoCode> {
        let n = self.s.q.nodes[v as usize];
        let ops = n.operands();
        let mut pin = Vec::new();
        let d = match n {
            Node::Const(_) => unreachable!("constants are not emitted"),
            Node::InputMask(k) | Node::InputByte(k) => {
                // Bytes widened to lanes (a `u8` input's value), then, for
                // a bool input, tested: nonzero is true.
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                // (An f64 program's lanes are 64 bits: 4 bytes a vector.)
                let wide = self.wide;
                if self.bcast.contains(k) {
                    let ptr = self.ptrs.input(&mut self.a, k)?;
                    self.a.movzx(r11d, byte_ptr(ptr))?;
                    self.a.vmovd(XMM[d], r11d)?;
                    if wide {
                        self.a.vpbroadcastq(dy, XMM[d])?;
                    } else {
                        self.a.vpbroadcastd(dy, XMM[d])?;
                    }
                } else {
                    let disp = self.disp[v as usize];
                    self.narrow_at(k, 1, disp, |g, m| {
                        if wide {
                            g.a.vpmovzxbq(dy, dword_ptr(m))?;
                        } else {
                            g.a.vpmovzxbd(dy, m)?;
                        }
                        Ok(())
                    })?;
                }
                if let Node::InputMask(_) = n {
                    let zero = ymmword_ptr(r10 + self.pool_at[&0]);
                    if wide {
                        self.a.vpcmpeqq(dy, dy, zero)?;
                    } else {
                        self.a.vpcmpeqd(dy, dy, zero)?;
                    }
                    self.a.vxorps(dy, dy, ymmword_ptr(r10 + self.pool_at[&all_ones(wide)]))?;
                }
                d
            }
            Node::InputHalf(k, h) => {
                let d = self.alloc(pos, &pin)?;
                let (dy, hx) = (YMM[d], XMM[d]);
                if self.bcast.contains(k) {
                    let ptr = self.ptrs.input(&mut self.a, k)?;
                    self.a.movzx(r11d, word_ptr(ptr))?;
                    if h == Half::Bf16 {
                        self.a.shl(r11d, 16)?;
                    }
                    self.a.vmovd(hx, r11d)?;
                    if h == Half::F16 {
                        // Eight copies of the half, widened.
                        self.a.vpbroadcastw(hx, hx)?;
                        self.a.vcvtph2ps(dy, hx)?;
                    } else {
                        self.a.vpbroadcastd(dy, hx)?;
                    }
                } else {
                    let disp = self.disp[v as usize];
                    self.narrow_at(k, 2, disp, |g, m| {
                        let m = xmmword_ptr(m);
                        if h == Half::F16 {
                            g.a.vcvtph2ps(dy, m)?;
                        } else {
                            g.a.vpmovzxwd(dy, m)?;
                            g.a.vpslld(dy, dy, 16)?;
                        }
                        Ok(())
                    })?;
                }
                d
            }
            Node::Input(k) => {
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                let ptr = self.ptrs.input(&mut self.a, k)?;
                if self.bcast.contains(k) {
                    if self.wide {
                        self.a.vbroadcastsd(dy, qword_ptr(ptr))?;
                    } else {
                        self.a.vbroadcastss(dy, dword_ptr(ptr))?;
                    }
                } else {
                    let m = ymmword_ptr(ptr + rax + self.disp[v as usize]);
                    match (self.masked, self.wide) {
                        (true, false) => self.a.vmaskmovps(dy, YMM[MASK], m)?,
                        (true, true) => self.a.vmaskmovpd(dy, YMM[MASK], m)?,
                        (false, _) => self.a.vmovups(dy, m)?,
                    }
                }
                d
            }
            Node::Fma(..) => return self.fma(v, pos),
            Node::Bin(op, x, y) => {
                let commutes = jit_code::commutes(op);
                let (x, y) = if commutes && !self.in_reg(x) && self.in_reg(y) { (y, x) } else { (x, y) };
                let s1 = self.load(x, pos, &mut pin)?;
                let s2 = self.opnd(y, &mut pin);
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                if self.wide {
                    emit_bin_f64!(
                        self.a,
                        op,
                        dy,
                        s1,
                        s2,
                        vandpd,
                        vxorpd,
                        vorpd,
                        return Err(NoCode),
                        return Err(NoCode)
                    )?;
                } else {
                    emit_bin!(self.a, op, dy, s1, s2, vandps, vxorps, vorps, return Err(NoCode))?;
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::Un(Un::Narrow(Half::F16), x) => {
                let s = self.load(x, pos, &mut pin)?;
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                // Rounded to nearest even by the conversion.
                self.a.vcvtps2ph(XMM[d], s, 0)?;
                self.a.vcvtph2ps(YMM[d], XMM[d])?;
                self.st.free_slots.extend(dead);
                d
            }
            Node::Un(Un::Narrow(Half::Bf16), x) => {
                // As `bf16::from_f32`: the top half of `x + 0x7fff + (bit
                // 16 of x)`, or of `x | 0x400000` for a NaN. `x` is read to
                // the end: the destination and temporaries are taken while
                // it holds its register.
                let s = self.load(x, pos, &mut pin)?;
                let (d, t, q) = (self.temp(pos, &mut pin)?, self.temp(pos, &mut pin)?, self.temp(pos, &mut pin)?);
                let dead = self.retire(&ops, pos);
                let dy = YMM[d];
                let c = |g: &Self, b: u64| ymmword_ptr(r10 + g.pool_at[&b]);
                self.a.vpsrld(dy, s, 16)?;
                self.a.vpand(dy, dy, c(self, 1))?;
                self.a.vpaddd(dy, dy, c(self, 0x7fff))?;
                self.a.vpaddd(dy, dy, s)?;
                self.a.vcmpps(YMM[t], s, s, pred_imm(Pred::Unord))?;
                self.a.vpor(YMM[q], s, c(self, 0x40_0000))?;
                self.a.vblendvps(dy, dy, YMM[q], YMM[t])?;
                self.a.vpand(dy, dy, c(self, 0xffff_0000))?;
                self.untemp(t);
                self.untemp(q);
                self.st.free_slots.extend(dead);
                d
            }
            Node::Un(op, x) => {
                // Shifts read a register; the others memory too.
                let s = if matches!(op, Un::Sra23 | Un::Shl(_) | Un::Sra(_) | Un::Lookup(_)) {
                    Opnd::Reg(self.load(x, pos, &mut pin)?)
                } else {
                    self.opnd(x, &mut pin)
                };
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                macro_rules! e {
                    ($m:ident $(, $imm:expr)?) => {
                        match s {
                            Opnd::Reg(r) => self.a.$m(dy, r $(, $imm)?)?,
                            Opnd::Mem(m) => self.a.$m(dy, m $(, $imm)?)?,
                        }
                    };
                }
                match (self.wide, op, s) {
                    (true, Un::Sqrt, _) => e!(vsqrtpd),
                    (true, Un::Round, _) => e!(vroundpd, 0x08),
                    (true, Un::Floor, _) => e!(vroundpd, 0x09),
                    (true, Un::Ceil, _) => e!(vroundpd, 0x0A),
                    (true, Un::Shl(n), Opnd::Reg(r)) => self.a.vpsllq(dy, r, n as i32)?,
                    (true, Un::Sra(n), Opnd::Reg(r)) => {
                        // No 64-bit arithmetic shift in AVX2: the logical
                        // one, its sign bit (now bit 63 - n) extended by
                        // (t ^ m) - m with m = 2^(63 - n).
                        let m = self.pool_at[&(1u64 << (63 - n))];
                        self.a.vpsrlq(dy, r, n as i32)?;
                        self.a.vpxor(dy, dy, ymmword_ptr(r10 + m))?;
                        self.a.vpsubq(dy, dy, ymmword_ptr(r10 + m))?;
                    }
                    (true, ..) => return Err(NoCode),
                    (false, Un::Sqrt, _) => e!(vsqrtps),
                    (false, Un::Rcp12, _) => e!(vrcpps),
                    (false, Un::Round, _) => e!(vroundps, 0x08),
                    (false, Un::Floor, _) => e!(vroundps, 0x09),
                    (false, Un::Ceil, _) => e!(vroundps, 0x0A),
                    (false, Un::Sra23, Opnd::Reg(r)) => {
                        self.a.vpsrad(dy, r, 23)?;
                        self.a.vcvtdq2ps(dy, dy)?;
                    }
                    (false, Un::Pow2i, _) => {
                        e!(vcvtps2dq);
                        self.a.vpaddd(dy, dy, ymmword_ptr(r10 + self.pool_at[&127]))?;
                        self.a.vpslld(dy, dy, 23)?;
                    }
                    (false, Un::Shl(n), Opnd::Reg(r)) => self.a.vpslld(dy, r, n as i32)?,
                    (false, Un::Sra(n), Opnd::Reg(r)) => self.a.vpsrad(dy, r, n as i32)?,
                    (false, Un::IAbs, _) => e!(vpabsd),
                    (false, Un::IntToFloat, _) => e!(vcvtdq2ps),
                    (false, Un::FloatToIntTrunc, _) => e!(vcvttps2dq),
                    (false, Un::Narrow(_), _) => unreachable!("emitted above"),
                    (false, Un::Lookup(t), Opnd::Reg(r)) => {
                        self.a.vpermps(dy, r, ymmword_ptr(r10 + self.table_at[&t]))?
                    }
                    (false, ..) => return Err(NoCode),
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::ICmp(p, x, y) => {
                // AVX2 compares integers for `==` and `>` only: `<` swaps
                // the operands, and `!=`, `<=`, `>=` complement `==`, `>`, `<`.
                let (eq, swap, not) = match p {
                    Pred::Eq => (true, false, false),
                    Pred::Neq => (true, false, true),
                    Pred::Gt => (false, false, false),
                    Pred::Lt => (false, true, false),
                    Pred::Le => (false, false, true),
                    Pred::Ge => (false, true, true),
                    Pred::Unord => return Err(NoCode),
                };
                let (x, y) = if swap { (y, x) } else { (x, y) };
                let s1 = self.load(x, pos, &mut pin)?;
                let s2 = self.opnd(y, &mut pin);
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                if eq {
                    emit3!(self.a, vpcmpeqd, dy, s1, s2)?;
                } else {
                    emit3!(self.a, vpcmpgtd, dy, s1, s2)?;
                }
                if not {
                    self.a.vxorps(dy, dy, ymmword_ptr(r10 + self.pool_at[&all_ones(self.wide)]))?;
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::Cmp(p, x, y) => {
                let s1 = self.load(x, pos, &mut pin)?;
                let s2 = self.opnd(y, &mut pin);
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                match (s2, self.wide) {
                    (Opnd::Reg(r), false) => self.a.vcmpps(YMM[d], s1, r, pred_imm(p))?,
                    (Opnd::Mem(m), false) => self.a.vcmpps(YMM[d], s1, m, pred_imm(p))?,
                    (Opnd::Reg(r), true) => self.a.vcmppd(YMM[d], s1, r, pred_imm(p))?,
                    (Opnd::Mem(m), true) => self.a.vcmppd(YMM[d], s1, m, pred_imm(p))?,
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::MaskAnd(x, y) | Node::MaskOr(x, y) => {
                let (x, y) = if !self.in_reg(x) && self.in_reg(y) { (y, x) } else { (x, y) };
                let s1 = self.load(x, pos, &mut pin)?;
                let s2 = self.opnd(y, &mut pin);
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                let dy = YMM[d];
                match (matches!(n, Node::MaskAnd(..)), s2) {
                    (true, Opnd::Reg(r)) => self.a.vandps(dy, s1, r)?,
                    (true, Opnd::Mem(m)) => self.a.vandps(dy, s1, m)?,
                    (false, Opnd::Reg(r)) => self.a.vorps(dy, s1, r)?,
                    (false, Opnd::Mem(m)) => self.a.vorps(dy, s1, m)?,
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::MaskNot(x) => {
                let s1 = self.load(x, pos, &mut pin)?;
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                self.a.vxorps(YMM[d], s1, ymmword_ptr(r10 + self.pool_at[&all_ones(self.wide)]))?;
                self.st.free_slots.extend(dead);
                d
            }
            Node::Blend(m, x, y) => {
                // d = m ? x : y: vblendvps d, y, x, m (the mask's sign bits pick x).
                let sm = self.load(m, pos, &mut pin)?;
                let sy = self.load(y, pos, &mut pin)?;
                let sx = self.opnd(x, &mut pin);
                let dead = self.retire(&ops, pos);
                let d = self.alloc(pos, &pin)?;
                match sx {
                    Opnd::Reg(r) => self.a.vblendvps(YMM[d], sy, r, sm)?,
                    Opnd::Mem(mm) => self.a.vblendvps(YMM[d], sy, mm, sm)?,
                }
                self.st.free_slots.extend(dead);
                d
            }
            Node::Fix(fix, x, y, r, m) => {
                // d = r; when a lane of `m` is set, a call fixes d's lanes
                // in place, every vector register saved around it (the
                // operands are in registers: the frame hides the stack slots).
                let sm = self.load(m, pos, &mut pin)?;
                let sx = self.load(x, pos, &mut pin)?;
                let sy = self.load(y, pos, &mut pin)?;
                let sr = self.load(r, pos, &mut pin)?;
                let d = self.alloc(pos, &pin)?;
                self.a.vmovaps(YMM[d], sr)?;
                let mut skip = self.a.create_label();
                // Only the vector's positions count: in the tail, the
                // lanes of the tail's mask.
                if self.masked {
                    self.a.vtestps(sm, YMM[MASK])?;
                } else {
                    self.a.vtestps(sm, sm)?;
                }
                self.a.jz(skip)?;
                const XS: i32 = VB * 16;
                const YS: i32 = XS + VB;
                const OS: i32 = YS + VB;
                jit_code::open_call(&mut self.a, OS + VB)?;
                for (i, y) in YMM.into_iter().enumerate() {
                    self.a.vmovups(ymmword_ptr(rsp + VB * i as i32), y)?;
                }
                self.a.vmovups(ymmword_ptr(rsp + XS), sx)?;
                self.a.vmovups(ymmword_ptr(rsp + YS), sy)?;
                self.a.vmovups(ymmword_ptr(rsp + OS), YMM[d])?;
                jit_code::call_fix(&mut self.a, fix, if self.wide { 4 } else { 8 }, [XS, YS, OS])?;
                for (i, y) in YMM.into_iter().enumerate() {
                    self.a.vmovups(y, ymmword_ptr(rsp + VB * i as i32))?;
                }
                self.a.vmovups(YMM[d], ymmword_ptr(rsp + OS))?;
                jit_code::close_call(&mut self.a)?;
                self.a.set_label(&mut skip)?;
                let dead = self.retire(&ops, pos);
                self.st.free_slots.extend(dead);
                d
            }
        };
        self.define(v, d);
        Ok(())
    }

    /// Emits `v = x * y + z`. FMA overwrites one operand: one that dies
    /// here and is in a register when there is one, else a copy.
    fn fma(&mut self, v: Val, pos: usize) -> Result<(), NoCode> {
        let Node::Fma(x, y, z) = self.s.q.nodes[v as usize] else { unreachable!("an fma node") };
        let dies = |g: &Self, w: Val| g.last[w as usize] == pos;
        // The overwritten operand: dying in a register; else one in memory
        // (loaded into the destination); else the addend, copied.
        let dst = [x, y, z]
            .into_iter()
            .find(|&w| self.in_reg(w) && dies(self, w))
            .or_else(|| [z, x, y].into_iter().find(|&w| !self.in_reg(w)))
            .unwrap_or(z);
        // 213: d = p * d + a; 132: d = d * m + a (m in memory); 231: d = x * y + d.
        let (form, p, a) = if dst == z {
            (231, x, y)
        } else if dst == x {
            (213, y, z)
        } else {
            (213, x, z)
        };
        let mut pin = Vec::new();
        // The two other operands: for 231 the factors (either may be in
        // memory); for 213 the factor `p` and addend `a`: `a` in memory, or
        // else `p` (form 132).
        let (form, r1, m2) = if form == 231 {
            let (r, m) = if !self.in_reg(p) && self.in_reg(a) { (a, p) } else { (p, a) };
            (231, self.load(r, pos, &mut pin)?, self.opnd(m, &mut pin))
        } else if !self.in_reg(p) && self.in_reg(a) {
            (132, self.load(a, pos, &mut pin)?, self.opnd(p, &mut pin))
        } else {
            (213, self.load(p, pos, &mut pin)?, self.opnd(a, &mut pin))
        };
        // The destination: the dying operand's register, or a copy.
        let d = match self.st.reg_of[dst as usize] {
            Some(r) if dies(self, dst) => {
                self.st.reg_of[dst as usize] = None;
                r
            }
            src => {
                pin.extend(src);
                let d = self.alloc(pos, &pin)?;
                match src {
                    Some(r) => self.a.vmovaps(YMM[d], YMM[r])?,
                    None => {
                        let h = self.st.home[dst as usize].expect("a computed value is in a register or in memory");
                        self.a.vmovaps(YMM[d], mem(h))?;
                    }
                }
                d
            }
        };
        self.define(v, d);
        let dy = YMM[d];
        match (form, self.wide) {
            (231, false) => emit3!(self.a, vfmadd231ps, dy, r1, m2)?,
            (132, false) => emit3!(self.a, vfmadd132ps, dy, r1, m2)?,
            (_, false) => emit3!(self.a, vfmadd213ps, dy, r1, m2)?,
            (231, true) => emit3!(self.a, vfmadd231pd, dy, r1, m2)?,
            (132, true) => emit3!(self.a, vfmadd132pd, dy, r1, m2)?,
            (_, true) => emit3!(self.a, vfmadd213pd, dy, r1, m2)?,
        }
        let dead = self.retire(&[x, y, z], pos);
        self.st.free_slots.extend(dead);
        Ok(())
    }

    /// Emits one iteration: the nodes in `order` (positions after the
    /// values computed before the loop), then the `stored` values, output
    /// by output and copy by copy (`copies` per output, a vector apart).
    fn iteration(&mut self, order: &[usize], stored: &[Val], copies: usize, v: Variant) -> Result<(), NoCode> {
        let n_in = self.s.q.inputs;
        if v.prefetch != 0 && !self.masked {
            for k in (0..n_in).filter(|&k| !self.bcast.contains(k)) {
                let ptr = self.ptrs.input(&mut self.a, k)?;
                for l in (0..copies as i32 * VB).step_by(64) {
                    self.a.prefetcht0(byte_ptr(ptr + rax + (v.prefetch + l)))?;
                }
            }
        }
        let start = self.s.pre.len();
        for (pos, &i) in order.iter().enumerate() {
            self.node(i as Val, start + pos)?;
        }
        let end = start + order.len();
        for (k, &w) in stored.iter().enumerate() {
            let mut pin = Vec::new();
            let r = self.load(w, end, &mut pin)?;
            let j = k / copies;
            let disp = VB * (k % copies) as i32;
            let at_k = n_in + j;
            let mask = self.s.q.is_mask(w);
            if mask || self.s.q.out_store[j] == Store::Byte {
                // A bool output (1 in the mask's lanes) or a `u8` one (the
                // lanes hold 0 to 255), packed to bytes.
                let (t, u) = (self.temp(end, &mut pin)?, self.temp(end, &mut pin)?);
                let low = if mask { 1 } else { 0xff };
                self.a.vpand(YMM[t], r, ymmword_ptr(r10 + self.pool_at[&low]))?;
                self.a.vextracti128(XMM[u], YMM[t], 1)?;
                self.a.vpackusdw(XMM[t], XMM[t], XMM[u])?;
                if self.wide {
                    // Words (q0, 0, q1, 0, ...) are the dwords q0..q3: once more.
                    self.a.vpackusdw(XMM[t], XMM[t], XMM[t])?;
                    self.a.vpackuswb(XMM[t], XMM[t], XMM[t])?;
                    self.narrow_at(at_k, 1, disp, |g, m| Ok(g.a.vmovd(dword_ptr(m), XMM[t])?))?;
                } else {
                    self.a.vpackuswb(XMM[t], XMM[t], XMM[t])?;
                    self.narrow_at(at_k, 1, disp, |g, m| Ok(g.a.vmovq(m, XMM[t])?))?;
                }
                self.untemp(t);
                self.untemp(u);
                continue;
            }
            if let Store::Half(h) = self.s.q.out_store[j] {
                // A value of the 16-bit type (exact), narrowed to words.
                let (t, u) = (self.temp(end, &mut pin)?, self.temp(end, &mut pin)?);
                if h == Half::Bf16 {
                    self.a.vpsrld(YMM[t], r, 16)?;
                    self.a.vextracti128(XMM[u], YMM[t], 1)?;
                    self.a.vpackusdw(XMM[t], XMM[t], XMM[u])?;
                } else {
                    self.a.vcvtps2ph(XMM[t], r, 0)?;
                }
                self.narrow_at(at_k, 2, disp, |g, m| Ok(g.a.vmovdqu(xmmword_ptr(m), XMM[t])?))?;
                self.untemp(t);
                self.untemp(u);
                continue;
            }
            let ptr = self.ptrs.output(&mut self.a, j)?;
            let at = ymmword_ptr(ptr + rax + disp);
            match (self.masked, self.wide) {
                (true, false) => self.a.vmaskmovps(at, YMM[MASK], r)?,
                (true, true) => self.a.vmaskmovpd(at, YMM[MASK], r)?,
                (false, _) => self.a.vmovups(at, r)?,
            }
        }
        Ok(())
    }
}

/// Whether `p` converts to or from `float16` (`vcvtph2ps`, `vcvtps2ph`).
fn uses_f16(p: &Prog) -> bool {
    p.nodes.iter().any(|n| matches!(n, Node::InputHalf(_, Half::F16) | Node::Un(Un::Narrow(Half::F16), _)))
        || p.out_store.contains(&Store::Half(Half::F16))
}

/// Whether the CPU has F16C.
fn f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The pool key of the vector of all ones (a mask's complement): the
/// constant whose every lane, of 32 or of 64 bits, is all ones.
fn all_ones(wide: bool) -> u64 {
    if wide {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    }
}

/// Compiles `p` for variant `v`; `None` only when the program holds an
/// operation of another level (see [`jit`](crate::backend::cpu::jit)).
pub fn generate(p: &Prog, v: Variant) -> Option<Code> {
    // float16 values are converted by F16C (which every AVX2 CPU we know
    // has).
    if uses_f16(p) && !f16c() {
        return None;
    }
    // The first pass finds how many stack slots the spills need; the
    // second, identical but for the frame's size, reserves them.
    let frame = emit(p, v, 0).ok()?.2;
    let (a, pool, used) = emit(p, v, frame).ok()?;
    if used > frame {
        return None;
    }
    Code::new(a, pool, p.inputs, p.outputs.len()).ok()
}

/// Emits `p` with a stack frame of `frame` bytes of slots; returns the
/// function (reading the returned pool) and the bytes of slots it uses
/// (when more than `frame`, the code is wrong and only the size is wanted).
fn emit(p: &Prog, v: Variant, frame: i32) -> Result<(CodeAssembler, Box<[jit_code::PoolLine]>, i32), NoCode> {
    let (n_in, n_out) = (p.inputs, p.outputs.len());
    let s = Schedule::new(p, &v.bcast, UNROLL);
    // Lanes per vector.
    let lanes = 32 / p.elem.bytes() as i32;
    // The pool: each constant in every lane (8 of 32 bits, or 4 of 64),
    // the exponent bias, all ones (a mask's complement), the sign-extension
    // constants of the 64-bit shifts, and the tail masks' table (8 lanes
    // of ones, 8 of zeros).
    let wide = p.elem == Elem::F64;
    let mut words: Vec<u32> = Vec::new();
    let mut pool_at = HashMap::new();
    let shifts = s.q.nodes.iter().filter_map(|n| match n {
        Node::Un(Un::Sra(k), _) => Some(1u64 << (63 - k)),
        _ => None,
    });
    // (0, 1, a byte's mask and the bfloat16 rounding's masks: bool, u8 and
    // 16-bit values.)
    let narrow = [0, 1, 0xff, 0x7fff, 0x40_0000, 0xffff_0000];
    for b in s.constants().into_iter().chain([127, all_ones(wide)]).chain(shifts).chain(narrow) {
        pool_at.entry(b).or_insert_with(|| {
            let at = 4 * words.len() as i32;
            if wide {
                (0..4).for_each(|_| words.extend([b as u32, (b >> 32) as u32]));
            } else {
                words.extend([b as u32; 8]);
            }
            at
        });
    }
    let mut table_at = HashMap::new();
    for t in s.tables() {
        table_at.insert(t, 4 * words.len() as i32);
        words.extend(t.values().iter().map(|v| v.to_bits()));
    }
    let mask_at = 4 * words.len() as i32;
    words.extend([u32::MAX; 8]);
    words.extend([0; 8]);
    let pool = jit_code::pool(&words);
    let home =
        s.q.nodes.iter().map(|n| if let Node::Const(b) = *n { Some(Home::Pool(pool_at[&b])) } else { None }).collect();
    let nv = s.q.nodes.len();
    let mut g = Gen {
        s: &s,
        disp: s.copy_of.iter().map(|&c| VB * c as i32).collect(),
        a: CodeAssembler::new(64)?,
        st: State { reg_of: vec![None; nv], home, holds: [None; 16], free_slots: Vec::new(), next_slot: 0 },
        nregs: 16,
        uses: Vec::new(),
        last: Vec::new(),
        frame_used: 0,
        pool_at,
        table_at,
        wide,
        bcast: v.bcast,
        ptrs: Ptrs::new(n_in, n_out, &v.bcast),
        masked: false,
        bounce: HashMap::new(),
    };
    jit_code::prologue(&mut g.a, &g.ptrs, &pool)?;
    if frame > 0 {
        // Slots at rsp, rsp + 32, ... (32-byte aligned); the caller's rsp after them.
        g.a.mov(r11, rsp)?;
        g.a.sub(rsp, frame + VB)?;
        g.a.and(rsp, -VB)?;
        g.a.mov(qword_ptr(rsp + frame), r11)?;
    }
    // Before the loop: the invariant values, then each kept in a stack slot.
    let one = s.order(1);
    g.plan(&one, &s.stored(1));
    for (pos, &i) in s.pre.iter().enumerate() {
        g.node(i as Val, pos)?;
    }
    for (r, reg) in YMM.into_iter().enumerate() {
        if let Some(w) = g.st.holds[r].take() {
            if g.st.home[w as usize].is_none() {
                let slot = g.take_slot();
                g.a.vmovaps(ymmword_ptr(rsp + slot), reg)?;
                g.st.home[w as usize] = Some(Home::Stack(slot));
            }
            g.st.reg_of[w as usize] = None;
        }
    }
    // Bounce slots of the byte and 16-bit inputs read in place and outputs
    // (by pointer number, with their element sizes), kept for the whole run.
    let mut narrow: Vec<(usize, u32)> = Vec::new();
    for n in &p.nodes {
        match *n {
            Node::InputMask(k) | Node::InputByte(k) if !v.bcast.contains(k) => narrow.push((k, 1)),
            Node::InputHalf(k, _) if !v.bcast.contains(k) => narrow.push((k, 2)),
            _ => {}
        }
    }
    for (j, &o) in p.outputs.iter().enumerate() {
        if p.is_mask(o) || p.out_store[j] == Store::Byte {
            narrow.push((n_in + j, 1));
        } else if matches!(p.out_store[j], Store::Half(_)) {
            narrow.push((n_in + j, 2));
        }
    }
    narrow.sort_unstable();
    narrow.dedup();
    for &(k, _) in &narrow {
        let slot = g.take_slot();
        g.bounce.insert(k, slot);
    }
    let top = g.st.clone();
    g.a.xor(eax, eax)?;
    let mut single = g.a.create_label();
    let mut tail = g.a.create_label();
    let mut done = g.a.create_label();
    if UNROLL > 1 {
        let (order, stored) = (s.order(UNROLL), s.stored(UNROLL));
        g.plan(&order, &stored);
        let mut many = g.a.create_label();
        g.a.set_label(&mut many)?;
        g.a.cmp(rcx, lanes * UNROLL as i32)?;
        g.a.jb(single)?;
        g.iteration(&order, &stored, UNROLL, v)?;
        g.a.add(rax, VB * UNROLL as i32)?;
        g.a.sub(rcx, lanes * UNROLL as i32)?;
        g.a.jmp(many)?;
    }
    let stored = s.stored(1);
    g.plan(&one, &stored);
    g.st = top.clone();
    g.a.set_label(&mut single)?;
    g.a.cmp(rcx, lanes)?;
    g.a.jb(tail)?;
    g.iteration(&one, &stored, 1, v)?;
    g.a.add(rax, VB)?;
    g.a.sub(rcx, lanes)?;
    g.a.jmp(single)?;
    // The last 1 to 7 positions (1 to 3 of f64): their lanes of the mask
    // from the table (the dwords of rcx lanes, from the end of the ones).
    g.a.set_label(&mut tail)?;
    g.a.test(rcx, rcx)?;
    g.a.je(done)?;
    g.a.mov(r11, rcx)?;
    g.a.neg(r11)?;
    let scale = if wide { 8 } else { 4 };
    g.a.vmovups(YMM[MASK], ymmword_ptr(r10 + r11 * scale + (mask_at + VB)))?;
    for &(k, size) in narrow.iter().filter(|&&(k, _)| k < n_in) {
        g.bounce_copy(k, size, true)?;
    }
    g.st = top;
    g.nregs = MASK;
    g.masked = true;
    g.iteration(&one, &stored, 1, v)?;
    for &(k, size) in narrow.iter().filter(|&&(k, _)| k >= n_in) {
        g.bounce_copy(k, size, false)?;
    }
    g.a.set_label(&mut done)?;
    if frame > 0 {
        g.a.mov(rsp, qword_ptr(rsp + frame))?;
    }
    jit_code::epilogue(&mut g.a)?;
    Ok((g.a, pool, g.frame_used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::jit::{Bin, Pred};
    use crate::backend::cpu::simd_math::{detected_level, Level};

    /// Runs `p` (one input, one output) over `x` through the generated code
    /// into a buffer with sentinels past `x.len()`, which must survive.
    fn run(p: &Prog, x: &[f32]) -> Vec<f32> {
        let code = generate(p, Variant { bcast: InputSet::EMPTY, prefetch: 0 }).expect("code is generated");
        let n = x.len();
        let mut out = vec![f32::from_bits(0x7fc0_dead); n + 24];
        // SAFETY: `x` holds `n` elements, `out` at least `n`, apart.
        unsafe { code.run(&[x.as_ptr()], &[out.as_mut_ptr()], n) };
        assert!(out[n..].iter().all(|v| v.to_bits() == 0x7fc0_dead), "nothing written past {n}");
        out.truncate(n);
        out
    }

    #[test]
    fn tails_write_only_their_positions() {
        if detected_level() < Level::Avx2 {
            return;
        }
        // x * 3 + 0.5 (fma), then min(., 4).
        let p = Prog {
            elem: Elem::F32,
            nodes: vec![
                Node::Input(0),
                Node::Const(3f32.to_bits().into()),
                Node::Const(0.5f32.to_bits().into()),
                Node::Fma(0, 1, 2),
                Node::Const(4f32.to_bits().into()),
                Node::Bin(Bin::Min, 3, 4),
            ],
            inputs: 1,
            outputs: vec![5],
            out_store: vec![Store::Lane],
        };
        for n in 0..=40 {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 2.0).collect();
            let want: Vec<f32> = x.iter().map(|&v| v.mul_add(3.0, 0.5).min(4.0)).collect();
            assert_eq!(run(&p, &x), want, "{n} positions");
        }
    }

    #[test]
    fn values_beyond_the_registers_are_spilled_and_reloaded() {
        if detected_level() < Level::Avx2 {
            return;
        }
        // v_i = x * c_i for 40 constants, summed in one order and multiplied
        // in the other: all forty are live at once.
        let k = 40;
        let mut nodes = vec![Node::Input(0)];
        let mut vs = Vec::new();
        for i in 0..k {
            nodes.push(Node::Const((1.0 + i as f32 / 64.0).to_bits().into()));
            nodes.push(Node::Bin(Bin::Mul, 0, nodes.len() as Val - 1));
            vs.push(nodes.len() as Val - 1);
        }
        let mut up = vs[0];
        for &v in &vs[1..] {
            nodes.push(Node::Bin(Bin::Add, up, v));
            up = nodes.len() as Val - 1;
        }
        let mut down = vs[k - 1];
        for &v in vs[..k - 1].iter().rev() {
            nodes.push(Node::Bin(Bin::Mul, down, v));
            down = nodes.len() as Val - 1;
        }
        nodes.push(Node::Bin(Bin::Sub, up, down));
        let out = nodes.len() as Val - 1;
        let p = Prog::new(nodes, 1, vec![out]);
        for n in [1, 8, 15, 16, 17, 100] {
            let x: Vec<f32> = (0..n).map(|i| 0.9 + i as f32 * 1e-3).collect();
            let want: Vec<f32> = x
                .iter()
                .map(|&x| {
                    let vs: Vec<f32> = (0..k).map(|i| x * (1.0 + i as f32 / 64.0)).collect();
                    let up = vs[1..].iter().fold(vs[0], |a, &v| a + v);
                    let down = vs[..k - 1].iter().rev().fold(vs[k - 1], |a, &v| a * v);
                    up - down
                })
                .collect();
            assert_eq!(run(&p, &x), want, "{n} positions");
        }
    }

    /// The AVX2 kernel of one op on `f32` (its operands all the one
    /// input) equals `want` (`simd_math` at `Level::Avx2`) bit for bit, on
    /// `specials` at several tail lengths.
    fn one_op_matches(
        prim: crate::primitive::Primitive,
        args: Vec<usize>,
        specials: &[f32],
        want: impl Fn(&[f32]) -> Vec<f32>,
    ) {
        use crate::dtype::DType;
        use crate::passes::fuse::{FusedGroup, FusedOp};
        let g = FusedGroup {
            inputs: vec![DType::F32],
            ops: vec![FusedOp { prim: prim.clone(), args, dtype: DType::F32 }],
            outputs: vec![1],
        };
        let p = crate::backend::cpu::jit::lower_at(&g, Level::Avx2).expect("lowers");
        for n in [1, 7, 8, 9, 16, 17, 40] {
            let x: Vec<f32> = (0..n).map(|i| specials[(i * 5) % specials.len()]).collect();
            for (i, (g, w)) in run(&p, &x).iter().zip(&want(&x)).enumerate() {
                assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{prim:?} {n}: {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn large_trigonometric_lanes_call_out_and_match_the_interpreter() {
        use crate::backend::cpu::simd_math::{apply, Func};
        use crate::primitive::{Primitive, UnaryOp};
        if detected_level() < Level::Avx2 {
            return;
        }
        let specials = [1e5f32, -65_536.5, 1.5, f32::INFINITY, -2.0, f32::NAN, 3e30, 0.25, -1e9];
        for (op, f) in [(UnaryOp::Sin, Func::Sin), (UnaryOp::Cos, Func::Cos), (UnaryOp::Tan, Func::Tan)] {
            one_op_matches(Primitive::Unary(op), vec![0], &specials, |x| {
                let mut want = vec![0.0f32; x.len()];
                apply(f, Level::Avx2, x, &mut want);
                want
            });
        }
    }

    #[test]
    fn pow_matches_the_interpreter() {
        use crate::backend::cpu::simd_math::pow_at;
        use crate::primitive::{BinaryOp, Primitive};
        if detected_level() < Level::Avx2 {
            return;
        }
        // x^x: the long chain (log and exp pairs) spills with 16 registers.
        let specials = [0.5f32, 3.0, -2.0, 0.0, -0.0, f32::INFINITY, f32::NAN, 1.0, 7.25, 1e-3, 30.0];
        one_op_matches(Primitive::Binary(BinaryOp::Pow), vec![0, 0], &specials, |x| {
            let mut want = vec![0.0f32; x.len()];
            pow_at(Level::Avx2, x, x, &mut want);
            want
        });
    }

    #[test]
    fn comparisons_and_mask_logic_select_per_lane() {
        if detected_level() < Level::Avx2 {
            return;
        }
        // Each predicate of x against 0.5 (x against itself for Unord) adds
        // its own power of two; then a complement, an and and an or.
        let preds = [Pred::Lt, Pred::Gt, Pred::Ge, Pred::Eq, Pred::Neq, Pred::Le, Pred::Unord];
        let mut nodes = vec![Node::Input(0), Node::Const(0.5f32.to_bits().into()), Node::Const(0f32.to_bits().into())];
        let push = |nodes: &mut Vec<Node>, n: Node| {
            nodes.push(n);
            nodes.len() as Val - 1
        };
        let mut acc = 2;
        let mut masks = Vec::new();
        let mut add_if = |nodes: &mut Vec<Node>, m: Val, k: usize| {
            let c = push(nodes, Node::Const(((1u32 << k) as f32).to_bits().into()));
            let b = push(nodes, Node::Blend(m, c, 2));
            acc = push(nodes, Node::Bin(Bin::Add, acc, b));
        };
        for (k, &p) in preds.iter().enumerate() {
            let m = push(&mut nodes, Node::Cmp(p, 0, if p == Pred::Unord { 0 } else { 1 }));
            masks.push(m);
            add_if(&mut nodes, m, k);
        }
        let not_lt = push(&mut nodes, Node::MaskNot(masks[0]));
        add_if(&mut nodes, not_lt, 7);
        let both = push(&mut nodes, Node::MaskAnd(masks[1], masks[4]));
        add_if(&mut nodes, both, 8);
        let either = push(&mut nodes, Node::MaskOr(masks[6], masks[3]));
        add_if(&mut nodes, either, 9);
        let p = Prog::new(nodes, 1, vec![acc]);
        let reference = |x: f32| {
            let bits = [
                x < 0.5,
                x > 0.5,
                x >= 0.5,
                x == 0.5,
                x != 0.5,
                x <= 0.5,
                x.is_nan(),
                x.partial_cmp(&0.5) != Some(std::cmp::Ordering::Less),
                x > 0.5 && x != 0.5,
                x.is_nan() || x == 0.5,
            ];
            bits.iter().enumerate().fold(0.0f32, |a, (k, &b)| a + if b { (1u32 << k) as f32 } else { 0.0 })
        };
        let specials = [0.5f32, -0.5, 0.0, -0.0, 1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.499_999_97];
        for n in [1, 7, 8, 9, 16, 17, 40] {
            let x: Vec<f32> = (0..n).map(|i| specials[i % specials.len()]).collect();
            let want: Vec<f32> = x.iter().map(|&v| reference(v)).collect();
            assert_eq!(run(&p, &x), want, "{n} positions");
        }
    }
}
