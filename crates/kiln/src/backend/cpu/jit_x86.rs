//! AVX-512 code generation for [`jit`](crate::backend::cpu::jit) programs.
//!
//! The generated function (calling convention in
//! [`jit_code`]) keeps 16 lanes per vector in
//! `zmm` registers (8 for a program of `f64` lanes, [`Elem::F64`], whose
//! nodes are emitted as the instructions' `pd` forms and whose `rax` is
//! the `f64` byte offset) and a lane mask in `k1` (all lanes, then the
//! remainder on the last iteration, so there is no scalar tail). The main
//! loop computes two vectors per iteration with their operations
//! interleaved (see [`generate`]); a one-vector loop finishes the rest.
//!
//! Registers are allocated in one pass over the SSA program: a value takes
//! a free register when it is defined and gives it back after its last use.
//! Values that depend on broadcast inputs and constants only are computed
//! once before the loop and keep their registers throughout. Constants live
//! in a pool addressed by `r10` and are read as embedded broadcasts
//! (`{1to16}`) where the instruction allows a memory operand. A program that
//! needs more than the 31 vector or 6 mask registers is not compiled (it
//! runs on the interpreter): with that many registers, no program of the
//! usual chains comes near, so there is no spilling (the AVX2 generator,
//! with 16 registers, spills).

use std::collections::HashMap;

use iced_x86::code_asm::*;

use crate::backend::cpu::jit::{Elem, Half, InputSet, Node, Pred, Prog, Store, Un, Val, Variant};
use crate::backend::cpu::jit_code::{
    self, emit3, emit_bin, emit_bin_f64, int_pred_imm, pred_imm, Code, NoCode, Opnd, Ptrs, Schedule,
};
use crate::backend::cpu::simd_math::Table;

/// Vector registers by number.
const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17,
    zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];
/// The lower halves of [`ZMM`].
const YMM: [AsmRegisterYmm; 32] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15, ymm16, ymm17,
    ymm18, ymm19, ymm20, ymm21, ymm22, ymm23, ymm24, ymm25, ymm26, ymm27, ymm28, ymm29, ymm30, ymm31,
];
/// Mask registers by number (`k0` cannot mask, `k1` is the loop mask).
const K: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];

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
    /// Per constant (its bits), its index in the pool's entries (each of
    /// the element type's size).
    pool_at: HashMap<u64, usize>,
    /// Byte offsets of the lookup tables in the pool (64-byte aligned, the
    /// eight entries twice).
    table_at: HashMap<Table, i32>,
    /// Where the input and output pointers are.
    ptrs: Ptrs,
    /// Whether every lane is in bounds (the unrolled loop): 16-bit floats
    /// are then converted straight from and to memory, where a masked
    /// access takes a zero-extending load or a narrowing store around the
    /// conversion.
    full: bool,
}

impl Gen<'_> {
    /// Whether the program's lanes are `f64` (8 a vector; else `f32`, 16).
    fn f64(&self) -> bool {
        self.p.elem == Elem::F64
    }

    /// The pool offset of a constant (every constant is pooled before emission).
    fn slot(&self, bits: u64) -> i32 {
        (self.p.elem.bytes() * self.pool_at[&bits]) as i32
    }

    /// A constant as an embedded-broadcast memory operand.
    fn pool_mem(&self, bits: u64) -> AsmMemoryOperand {
        if self.f64() {
            qword_bcst(r10 + self.slot(bits))
        } else {
            dword_bcst(r10 + self.slot(bits))
        }
    }

    fn take_z(&mut self) -> Result<usize, NoCode> {
        self.free_z.pop().ok_or(NoCode)
    }

    fn take_k(&mut self) -> Result<usize, NoCode> {
        self.free_k.pop().ok_or(NoCode)
    }

    fn opnd(&self, v: Val) -> Opnd<AsmRegisterZmm> {
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
                if self.f64() {
                    self.a.vbroadcastsd(ZMM[t], qword_ptr(r10 + self.slot(bits)))?;
                } else {
                    self.a.vbroadcastss(ZMM[t], dword_ptr(r10 + self.slot(bits)))?;
                }
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
    fn node(&mut self, v: Val, pos: usize, bcast: &InputSet) -> Result<(), NoCode> {
        let n = self.p.nodes[v as usize];
        let ops = n.operands();
        let mut temps = Vec::new();
        match n {
            Node::Const(_) => unreachable!("constants are not emitted"),
            Node::Input(k) => {
                let d = self.take_z()?;
                let disp = self.disp[v as usize];
                let ptr = self.ptrs.input(&mut self.a, k)?;
                match (bcast.contains(k), self.f64()) {
                    (true, false) => self.a.vbroadcastss(ZMM[d], dword_ptr(ptr))?,
                    (true, true) => self.a.vbroadcastsd(ZMM[d], qword_ptr(ptr))?,
                    (false, false) => self.a.vmovups(ZMM[d].k1().z(), zmmword_ptr(ptr + rax + disp))?,
                    (false, true) => self.a.vmovupd(ZMM[d].k1().z(), zmmword_ptr(ptr + rax + disp))?,
                }
                self.loc[v as usize] = Loc::Z(d);
            }
            Node::InputMask(k) | Node::InputByte(k) => {
                // Bytes widened to lanes (a `u8` input's value), then, for
                // a bool input, tested: nonzero is true.
                let t = self.take_z()?;
                let wide = self.f64();
                let disp = self.disp[v as usize] / self.p.elem.bytes() as i32;
                let ptr = self.ptrs.input(&mut self.a, k)?;
                if bcast.contains(k) {
                    self.a.movzx(r11d, byte_ptr(ptr))?;
                    self.a.vpbroadcastd(ZMM[t], r11d)?;
                } else if wide {
                    // `rax` is the position's f64 byte offset (a multiple of
                    // 64): an eighth of it is the position's byte offset.
                    self.a.shr(rax, 3)?;
                    self.a.vpmovzxbq(ZMM[t].k1().z(), qword_ptr(ptr + rax + disp))?;
                    self.a.shl(rax, 3)?;
                } else {
                    // `rax` is the position's f32 byte offset (a multiple of
                    // 64): a quarter of it is the position's byte offset.
                    self.a.shr(rax, 2)?;
                    self.a.vpmovzxbd(ZMM[t].k1().z(), xmmword_ptr(ptr + rax + disp))?;
                    self.a.shl(rax, 2)?;
                }
                if let Node::InputByte(_) = n {
                    self.loc[v as usize] = Loc::Z(t);
                    return Ok(());
                }
                let kd = self.take_k()?;
                if wide {
                    self.a.vptestmq(K[kd], ZMM[t], ZMM[t])?;
                } else {
                    self.a.vptestmd(K[kd], ZMM[t], ZMM[t])?;
                }
                self.free_z.push(t);
                self.loc[v as usize] = Loc::K(kd);
            }
            Node::InputHalf(k, h) => {
                // 16-bit floats widened to 32 bits each, then to f32.
                let d = self.take_z()?;
                let disp = self.disp[v as usize] / 2;
                let ptr = self.ptrs.input(&mut self.a, k)?;
                // `rax` is the position's f32 byte offset: half of it is
                // the 16-bit one.
                let at = ymmword_ptr(ptr + rax + disp);
                match (bcast.contains(k), self.full, h) {
                    (false, true, Half::F16) => {
                        self.a.shr(rax, 1)?;
                        self.a.vcvtph2ps(ZMM[d], at)?;
                        self.a.shl(rax, 1)?;
                    }
                    (bc, ..) => {
                        // Each 16-bit value zero-extended to its lane, then widened.
                        if bc {
                            self.a.movzx(r11d, word_ptr(ptr))?;
                            self.a.vpbroadcastd(ZMM[d], r11d)?;
                        } else {
                            self.a.shr(rax, 1)?;
                            self.a.vpmovzxwd(ZMM[d].k1().z(), at)?;
                            self.a.shl(rax, 1)?;
                        }
                        if h == Half::F16 {
                            self.a.vpmovdw(YMM[d], ZMM[d])?;
                            self.a.vcvtph2ps(ZMM[d], YMM[d])?;
                        } else {
                            self.a.vpslld(ZMM[d], ZMM[d], 16)?;
                        }
                    }
                }
                self.loc[v as usize] = Loc::Z(d);
            }
            Node::Un(Un::Narrow(Half::Bf16), x) => {
                // As `bf16::from_f32`: the top half of `x + 0x7fff + (bit
                // 16 of x)` (to nearest even), or of `x | 0x400000` for a
                // NaN (quieted). Temporaries are taken before `x` is freed.
                let s = self.reg(x, &mut temps)?;
                let t = self.take_z()?;
                let k = self.take_k()?;
                let tz = ZMM[t];
                self.a.vpsrld(tz, s, 16)?;
                self.a.vpandd(tz, tz, self.pool_mem(1))?;
                self.a.vpaddd(tz, tz, self.pool_mem(0x7fff))?;
                self.a.vpaddd(tz, tz, s)?;
                self.a.vcmpps(K[k], s, s, pred_imm(Pred::Unord))?;
                self.a.vpord(masked(tz, k), s, self.pool_mem(0x40_0000))?;
                self.a.vpandd(tz, tz, self.pool_mem(0xffff_0000))?;
                self.free_k.push(k);
                self.free(&temps, &ops, pos);
                self.loc[v as usize] = Loc::Z(t);
                return Ok(());
            }
            Node::Bin(op, x, y) => {
                let commutes = jit_code::commutes(op);
                let (x, y) = match (self.loc[x as usize], commutes) {
                    (Loc::Pool, true) => (y, x),
                    _ => (x, y),
                };
                let s1 = self.reg(x, &mut temps)?;
                let s2 = self.opnd(y);
                self.free(&temps, &ops, pos);
                let d = self.take_z()?;
                let dz = ZMM[d];
                if self.f64() {
                    emit_bin_f64!(
                        self.a,
                        op,
                        dz,
                        s1,
                        s2,
                        vpandq,
                        vpxorq,
                        vporq,
                        emit3!(self.a, vscalefpd, dz, s1, s2),
                        return Err(NoCode)
                    )?;
                } else {
                    emit_bin!(self.a, op, dz, s1, s2, vpandd, vpxord, vpord, emit3!(self.a, vscalefps, dz, s1, s2))?;
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
                match (use132, self.f64()) {
                    (true, false) => emit3!(self.a, vfmadd132ps, dz, src2, mem)?,
                    (false, false) => emit3!(self.a, vfmadd213ps, dz, src2, mem)?,
                    (true, true) => emit3!(self.a, vfmadd132pd, dz, src2, mem)?,
                    (false, true) => emit3!(self.a, vfmadd213pd, dz, src2, mem)?,
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
                if self.f64() {
                    match op {
                        Un::Sqrt => self.a.vsqrtpd(dz, s)?,
                        Un::Round => self.a.vrndscalepd(dz, s, 0x08)?,
                        Un::Floor => self.a.vrndscalepd(dz, s, 0x09)?,
                        Un::Ceil => self.a.vrndscalepd(dz, s, 0x0A)?,
                        Un::Shl(n) => self.a.vpsllq(dz, s, n as i32)?,
                        Un::Sra(n) => self.a.vpsraq(dz, s, n as i32)?,
                        // Not recorded for f64 (`record_f32_only`; no 16-bit values).
                        _ => return Err(NoCode),
                    }
                    self.loc[v as usize] = Loc::Z(d);
                    return Ok(());
                }
                match op {
                    Un::Sqrt => self.a.vsqrtps(dz, s)?,
                    Un::Rcp14 => self.a.vrcp14ps(dz, s)?,
                    Un::Rcp12 => return Err(NoCode),
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
                    Un::IAbs => self.a.vpabsd(dz, s)?,
                    Un::Shl(n) => self.a.vpslld(dz, s, n as i32)?,
                    Un::Sra(n) => self.a.vpsrad(dz, s, n as i32)?,
                    Un::IntToFloat => self.a.vcvtdq2ps(dz, s)?,
                    Un::FloatToIntTrunc => self.a.vcvttps2dq(dz, s)?,
                    Un::Narrow(Half::F16) => {
                        // Rounded to nearest even by the conversion.
                        self.a.vcvtps2ph(YMM[d], s, 0)?;
                        self.a.vcvtph2ps(dz, YMM[d])?;
                    }
                    Un::Narrow(Half::Bf16) => unreachable!("emitted above"),
                    Un::Lookup(t) => self.a.vpermps(dz, s, zmmword_ptr(r10 + self.table_at[&t]))?,
                }
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
            Node::Cmp(p, x, y) => {
                let s1 = self.reg(x, &mut temps)?;
                let s2 = self.opnd(y);
                self.free(&temps, &ops, pos);
                let k = self.take_k()?;
                match (s2, self.f64()) {
                    (Opnd::Reg(r), false) => self.a.vcmpps(K[k], s1, r, pred_imm(p))?,
                    (Opnd::Mem(m), false) => self.a.vcmpps(K[k], s1, m, pred_imm(p))?,
                    (Opnd::Reg(r), true) => self.a.vcmppd(K[k], s1, r, pred_imm(p))?,
                    (Opnd::Mem(m), true) => self.a.vcmppd(K[k], s1, m, pred_imm(p))?,
                }
                self.loc[v as usize] = Loc::K(k);
                return Ok(());
            }
            Node::ICmp(p, x, y) => {
                if self.f64() {
                    return Err(NoCode);
                }
                let s1 = self.reg(x, &mut temps)?;
                let s2 = self.opnd(y);
                self.free(&temps, &ops, pos);
                let k = self.take_k()?;
                match s2 {
                    Opnd::Reg(r) => self.a.vpcmpd(K[k], s1, r, int_pred_imm(p))?,
                    Opnd::Mem(m) => self.a.vpcmpd(K[k], s1, m, int_pred_imm(p))?,
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
            Node::MaskNot(x) => {
                let kx = self.kreg(x);
                self.free(&temps, &ops, pos);
                let k = self.take_k()?;
                self.a.knotw(K[k], K[kx])?;
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
                if self.f64() {
                    emit3!(self.a, vblendmpd, dz, sy, sx)?;
                } else {
                    emit3!(self.a, vblendmps, dz, sy, sx)?;
                }
                self.loc[v as usize] = Loc::Z(d);
                return Ok(());
            }
            Node::Fix(fix, x, y, r, m) => {
                // d = r; when a lane of `m` is set, a call fixes d's lanes
                // in place, every vector register in use (the others hold
                // nothing read later) and every mask register saved around it.
                let km = self.kreg(m);
                let sx = self.reg(x, &mut temps)?;
                let sy = self.reg(y, &mut temps)?;
                let sr = self.reg(r, &mut temps)?;
                let d = self.take_z()?;
                let saved: Vec<usize> = (0..ZMM.len()).filter(|r| !self.free_z.contains(r)).collect();
                self.a.vmovaps(ZMM[d], sr)?;
                let mut skip = self.a.create_label();
                // Only the vector's positions count (k1: the tail's lanes,
                // or every lane): its zeroed lanes past the end are no
                // operands, and a complemented mask sets the bits above an
                // f64 program's eight lanes.
                self.a.kandw(k0, K[km], k1)?;
                self.a.kortestw(k0, k0)?;
                self.a.jz(skip)?;
                const KS: i32 = 64 * 32;
                const XS: i32 = KS + 64;
                const YS: i32 = XS + 64;
                const OS: i32 = YS + 64;
                jit_code::open_call(&mut self.a, OS + 64)?;
                for &i in &saved {
                    self.a.vmovups(zmmword_ptr(rsp + 64 * i as i32), ZMM[i])?;
                }
                for (i, k) in K.into_iter().enumerate().skip(1) {
                    self.a.kmovw(word_ptr(rsp + (KS + 2 * i as i32)), k)?;
                }
                self.a.vmovups(zmmword_ptr(rsp + XS), sx)?;
                self.a.vmovups(zmmword_ptr(rsp + YS), sy)?;
                self.a.vmovups(zmmword_ptr(rsp + OS), ZMM[d])?;
                jit_code::call_fix(&mut self.a, fix, 64 / self.p.elem.bytes() as u32, [XS, YS, OS])?;
                for &i in &saved {
                    self.a.vmovups(ZMM[i], zmmword_ptr(rsp + 64 * i as i32))?;
                }
                self.a.vmovups(ZMM[d], zmmword_ptr(rsp + OS))?;
                for (i, k) in K.into_iter().enumerate().skip(1) {
                    self.a.kmovw(k, word_ptr(rsp + (KS + 2 * i as i32)))?;
                }
                jit_code::close_call(&mut self.a)?;
                self.a.set_label(&mut skip)?;
                self.free(&temps, &ops, pos);
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
    let bcast = &v.bcast;
    let (n_in, n_out) = (p.inputs, p.outputs.len());
    let s = Schedule::new(p, bcast, copies);
    let (pre, copy) = (&s.pre, &s.copy);
    let disp = s.copy_of.iter().map(|&c| 64 * c as i32).collect();
    let unroll = copies > 1;
    let pair_order = s.order(copies);
    let last_one = s.last_uses(&s.body, &p.outputs);
    let last_pair = if unroll { s.last_uses(&pair_order, &s.stored(copies)) } else { last_one.clone() };
    let loc = s.q.nodes.iter().map(|n| if matches!(n, Node::Const(_)) { Loc::Pool } else { Loc::None }).collect();
    // The constant pool: every constant of the program, the exponent bias,
    // the integer 1 (a true bool) and bfloat16 rounding's masks, each an
    // entry of the element type's size.
    let wide = p.elem == Elem::F64;
    let mut entries = s.constants();
    entries.extend([127, 1, 0x7fff, 0x40_0000, 0xffff_0000]);
    let mut words: Vec<u32> = if wide {
        entries.iter().flat_map(|&b| [b as u32, (b >> 32) as u32]).collect()
    } else {
        entries.iter().map(|&b| b as u32).collect()
    };
    // Lookup tables on whole lines, after the constants.
    let mut table_at = HashMap::new();
    for t in s.tables() {
        words.resize(words.len().next_multiple_of(16), 0);
        table_at.insert(t, 4 * words.len() as i32);
        words.extend(t.values().iter().chain(t.values()).map(|v| v.to_bits()));
    }
    let pool = jit_code::pool(&words);
    let mut pool_at = HashMap::new();
    for (i, &b) in entries.iter().enumerate() {
        pool_at.entry(b).or_insert(i);
    }
    // Lanes per vector (each vector is 64 bytes).
    let lanes = 64 / p.elem.bytes() as i32;
    let mut g = Gen {
        p: &s.q,
        disp,
        a: CodeAssembler::new(64)?,
        loc,
        last: last_pair,
        free_z: (0..32).rev().collect(),
        free_k: (2..8).rev().collect(),
        pool_at,
        table_at,
        ptrs: Ptrs::new(n_in, n_out, bcast),
        full: false,
    };
    jit_code::prologue(&mut g.a, &g.ptrs, &pool)?;
    // Every lane (k1) before the invariant values too: a call out among
    // them tests its mask against k1.
    g.a.mov(r11d, (1 << lanes) - 1)?;
    g.a.kmovw(k1, r11d)?;
    for (pos, &i) in pre.iter().enumerate() {
        g.node(i as Val, pos, bcast)?;
    }
    g.a.xor(eax, eax)?;
    // One iteration over `copies.len()` vectors: prefetch, the nodes in
    // `order`, then each copy's outputs, 64 bytes apart.
    let iteration = |g: &mut Gen, order: &[usize], copies: &[Vec<Val>]| -> Result<(), NoCode> {
        if v.prefetch != 0 {
            for k in (0..n_in).filter(|&k| !bcast.contains(k)) {
                let ptr = g.ptrs.input(&mut g.a, k)?;
                for l in 0..copies.len() as i32 {
                    g.a.prefetcht0(byte_ptr(ptr + rax + (v.prefetch + 64 * l)))?;
                }
            }
        }
        for (pos, &i) in order.iter().enumerate() {
            g.node(i as Val, pre.len() + pos, bcast)?;
        }
        for (j, &o) in p.outputs.iter().enumerate() {
            for (c, cv) in copies.iter().enumerate() {
                if p.is_mask(o) {
                    // A bool output: 1 in the mask's lanes, narrowed to bytes.
                    let km = g.kreg(cv[o as usize]);
                    let t = g.take_z()?;
                    let ptr = g.ptrs.output(&mut g.a, j)?;
                    if wide {
                        g.a.vpbroadcastq(masked(ZMM[t], km).z(), qword_ptr(r10 + g.slot(1)))?;
                        g.a.shr(rax, 3)?;
                        g.a.vpmovqb(qword_ptr(ptr + rax + 8 * c as i32).k1(), ZMM[t])?;
                        g.a.shl(rax, 3)?;
                    } else {
                        g.a.vpbroadcastd(masked(ZMM[t], km).z(), dword_ptr(r10 + g.slot(1)))?;
                        g.a.shr(rax, 2)?;
                        g.a.vpmovdb(xmmword_ptr(ptr + rax + 16 * c as i32).k1(), ZMM[t])?;
                        g.a.shl(rax, 2)?;
                    }
                    g.free_z.push(t);
                    continue;
                }
                let mut temps = Vec::new();
                let r = g.reg(cv[o as usize], &mut temps)?;
                if p.out_store[j] == Store::Byte {
                    // A `u8` output: each lane's low byte (the lane holds
                    // 0 to 255).
                    let ptr = g.ptrs.output(&mut g.a, j)?;
                    g.a.shr(rax, 2)?;
                    g.a.vpmovdb(xmmword_ptr(ptr + rax + 16 * c as i32).k1(), r)?;
                    g.a.shl(rax, 2)?;
                    g.free_z.extend_from_slice(&temps);
                    continue;
                }
                if let Store::Half(h) = p.out_store[j] {
                    // A value of the 16-bit type: its 16 bits per lane
                    // (exact), narrowed to words.
                    let t = g.take_z()?;
                    let ptr = g.ptrs.output(&mut g.a, j)?;
                    let at = ymmword_ptr(ptr + rax + 32 * c as i32);
                    g.a.shr(rax, 1)?;
                    match (h, g.full) {
                        (Half::F16, true) => g.a.vcvtps2ph(at, r, 0)?,
                        (Half::F16, false) => {
                            g.a.vcvtps2ph(YMM[t], r, 0)?;
                            g.a.vpmovzxwd(ZMM[t], YMM[t])?;
                            g.a.vpmovdw(at.k1(), ZMM[t])?;
                        }
                        (Half::Bf16, _) => {
                            g.a.vpsrld(ZMM[t], r, 16)?;
                            g.a.vpmovdw(at.k1(), ZMM[t])?;
                        }
                    }
                    g.a.shl(rax, 1)?;
                    g.free_z.push(t);
                    g.free_z.extend_from_slice(&temps);
                    continue;
                }
                let ptr = g.ptrs.output(&mut g.a, j)?;
                if wide {
                    g.a.vmovupd(zmmword_ptr(ptr + rax + 64 * c as i32).k1(), r)?;
                } else {
                    g.a.vmovups(zmmword_ptr(ptr + rax + 64 * c as i32).k1(), r)?;
                }
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
        g.a.cmp(rcx, lanes * copies as i32)?;
        g.a.jb(top)?;
        g.full = true;
        iteration(&mut g, &pair_order, copy)?;
        g.full = false;
        g.a.add(rax, 64 * copies as i32)?;
        g.a.sub(rcx, lanes * copies as i32)?;
        g.a.jmp(pairs)?;
        (g.loc, g.free_z, g.free_k) = after_pre;
        g.last = last_one;
    }
    g.a.set_label(&mut top)?;
    g.a.cmp(rcx, lanes)?;
    g.a.jae(body_l)?;
    g.a.test(rcx, rcx)?;
    g.a.je(done)?;
    g.a.mov(r11d, 1)?;
    g.a.shl(r11d, cl)?;
    g.a.dec(r11d)?;
    g.a.kmovw(k1, r11d)?;
    g.a.set_label(&mut body_l)?;
    iteration(&mut g, &s.body, &copy[..1])?;
    g.a.add(rax, 64)?;
    g.a.sub(rcx, lanes)?;
    g.a.ja(top)?;
    g.a.set_label(&mut done)?;
    jit_code::epilogue(&mut g.a)?;
    Code::new(g.a, pool, n_in, n_out)
}
