//! kiln's R objects made with R's C API directly, and the `.Call` entry
//! point of a compiled call: the binding's hot path.
//!
//! Why not extendr's `ExternalPtr` and generated wrappers here: every
//! object extendr hands to Rust is entered into its process-wide ownership
//! table (a hash map plus an R list that only grows until it is rebuilt),
//! and `ExternalPtr::new` makes an R string for the type name each time. A
//! compiled call of the seed's `matmul_add` went through about ten such
//! objects, which cost more than the rest of R's side of the call. Here:
//!
//! - an mlx array is an external pointer whose address is a `Box<Array>`,
//!   whose tag is the symbol `kiln_array` (the type check) and whose class
//!   attribute is one shared, immutable `"mlx"` vector; its finalizer drops
//!   the box (and clears the address, so a finalized or restored-from-disk
//!   pointer reads as "no array" rather than freed memory);
//! - a compiled function's handle is the same with the tag `kiln_compiled`;
//! - [`kiln_call`] is registered with R as the routine `kiln_call`: it reads
//!   its arguments, calls the compiled function and builds the result with
//!   no extendr object on the way, unless an argument is R data to convert.
//!
//! This module is the binding's only `unsafe` code; each block says why it
//! holds. R's API signals errors by a long jump; of the calls made here only
//! allocation can fail (R out of memory), and the frames it would jump over
//! hold no Rust value whose destructor matters more than a leak.

use std::cell::Cell;
use std::ffi::{c_void, CStr};

use extendr_api::metadata::{Arg, Func, Metadata};
use extendr_api::{GetSexp, Robj, SEXP};
use extendr_ffi as r;
use kiln::Array;

/// A Rust type kept behind an R external pointer.
pub trait Native: Sized + 'static {
    /// The symbol that tags pointers to this type.
    const TAG: &'static CStr;
    /// The index of this type's cached tag symbol.
    const SLOT: usize;
}

impl Native for Array {
    const TAG: &'static CStr = c"kiln_array";
    const SLOT: usize = 0;
}

thread_local! {
    /// The tag symbols, once installed (R runs on one thread; symbols are
    /// never collected).
    static TAGS: Cell<[SEXP; 2]> = const { Cell::new([std::ptr::null_mut(); 2]) };
    /// The shared class vector `"mlx"`, once made (and preserved).
    static MLX_CLASS: Cell<SEXP> = const { Cell::new(std::ptr::null_mut()) };
}

fn tag<T: Native>() -> SEXP {
    let mut tags = TAGS.with(Cell::get);
    if tags[T::SLOT].is_null() {
        // SAFETY: `TAG` is a NUL-terminated string; `Rf_install` returns the
        // interned symbol, which R never collects.
        tags[T::SLOT] = unsafe { r::Rf_install(T::TAG.as_ptr()) };
        TAGS.with(|t| t.set(tags));
    }
    tags[T::SLOT]
}

fn mlx_class() -> SEXP {
    let class = MLX_CLASS.with(Cell::get);
    if !class.is_null() {
        return class;
    }
    // SAFETY: the vector is protected while its element is made, then
    // preserved for the life of the process and marked immutable, so every
    // array can share it as its class attribute (R copies it before any
    // change, as for any shared value).
    let class = unsafe {
        let v = r::Rf_protect(r::Rf_allocVector(r::SEXPTYPE::STRSXP, 1));
        r::SET_STRING_ELT(v, 0, r::Rf_mkCharLenCE(c"mlx".as_ptr(), 3, r::cetype_t::CE_UTF8));
        r::R_PreserveObject(v);
        r::MARK_NOT_MUTABLE(v);
        r::Rf_unprotect(1);
        v
    };
    MLX_CLASS.with(|c| c.set(class));
    class
}

/// Drops the box behind an external pointer of `T` when R collects it.
extern "C" fn finalize<T: Native>(x: SEXP) {
    // SAFETY: R calls a finalizer with the external pointer it was
    // registered on, made by [`make`]: its address is null (cleared before)
    // or a `Box<T>` that only this pointer owns. Clearing the address first
    // makes a second run, or a later read, see null.
    unsafe {
        let p = r::R_ExternalPtrAddr(x).cast::<T>();
        if !p.is_null() {
            r::R_ClearExternalPtr(x);
            drop(Box::from_raw(p));
        }
    }
}

/// `value` behind a new external pointer (unprotected: store or return it
/// before R allocates again).
fn make<T: Native>(value: T) -> SEXP {
    let p = Box::into_raw(Box::new(value));
    // SAFETY: the pointer owns the box from here on (the finalizer frees
    // it); it is protected while the finalizer is registered, which
    // allocates.
    unsafe {
        let x = r::Rf_protect(r::R_MakeExternalPtr(p.cast::<c_void>(), tag::<T>(), r::R_NilValue));
        r::R_RegisterCFinalizerEx(x, Some(finalize::<T>), r::Rboolean::FALSE);
        r::Rf_unprotect(1);
        x
    }
}

/// The `T` behind `x`, if `x` is a live external pointer of `T`.
///
/// # Safety
/// `x` must be a valid R object that stays protected (a `.Call` argument,
/// or held by an `Robj`) for the lifetime `'a`.
unsafe fn get<'a, T: Native>(x: SEXP) -> Option<&'a T> {
    // SAFETY: `x` is valid (the caller's promise); the tag identifies
    // pointers made by `make::<T>`, whose address is null or a live
    // `Box<T>` kept alive by `x`.
    unsafe {
        if r::TYPEOF(x) != r::SEXPTYPE::EXTPTRSXP || r::R_ExternalPtrTag(x) != tag::<T>() {
            return None;
        }
        r::R_ExternalPtrAddr(x).cast::<T>().as_ref()
    }
}

/// The `T` behind the R object `x`, if it is a live external pointer of `T`.
pub fn native<T: Native>(x: &Robj) -> Option<&T> {
    // SAFETY: an `Robj` keeps its object protected while it lives, and the
    // result borrows `x`.
    unsafe { get(x.get()) }
}

/// Whether `x` is an external pointer of `T` whose value is gone: R does not
/// save what an external pointer points to, so one saved to disk and loaded
/// again (or finalized) has a null address.
pub fn is_dead<T: Native>(x: &Robj) -> bool {
    // SAFETY: an `Robj` keeps its object valid and protected while it lives.
    unsafe {
        let x = x.get();
        r::TYPEOF(x) == r::SEXPTYPE::EXTPTRSXP
            && r::R_ExternalPtrTag(x) == tag::<T>()
            && r::R_ExternalPtrAddr(x).is_null()
    }
}

/// `value` as an R object (an external pointer of `T`).
pub fn to_robj<T: Native>(value: T) -> Robj {
    // SAFETY: `make` returns a valid object, which `from_sexp` protects at once.
    unsafe { Robj::from_sexp(make(value)) }
}

/// `a` as an R object of class `"mlx"` (unprotected, as [`make`]).
fn mlx(a: Array) -> SEXP {
    let x = make(a);
    // SAFETY: `x` is protected while the class is set (setting it may allocate).
    unsafe {
        r::Rf_protect(x);
        r::Rf_setAttrib(x, r::R_ClassSymbol, mlx_class());
        r::Rf_unprotect(1);
    }
    x
}

/// `a` as an R object of class `"mlx"`, counting its data as handed to R.
pub fn wrap(a: Array) -> Robj {
    crate::handed_to_r(crate::data_bytes(&a));
    // SAFETY: `mlx` returns a valid object, which `from_sexp` protects at once.
    unsafe { Robj::from_sexp(mlx(a)) }
}

/// The `.Call` routine `kiln_call(handle, args)`: calls the compiled function
/// behind `handle` on the list `args` (mlx arrays, or R data converted as
/// `as_mlx` does), and returns its mlx array or named list of them.
extern "C" fn kiln_call(handle: SEXP, args: SEXP) -> SEXP {
    // SAFETY: R passes valid, protected objects to a `.Call` routine.
    match std::panic::catch_unwind(|| unsafe { call(handle, args) }) {
        Ok(Ok(x)) => x,
        Ok(Err(msg)) => extendr_api::throw_r_error(msg),
        Err(payload) => extendr_api::throw_r_error(crate::panic_message(payload)),
    }
}

/// The body of [`kiln_call`].
///
/// # Safety
/// `handle` and `args` must be valid objects protected for the call.
unsafe fn call(handle: SEXP, args: SEXP) -> Result<SEXP, String> {
    // SAFETY: the caller keeps both objects protected during this call.
    let (compiled, n) = unsafe {
        let Some(c) = get::<crate::RCompiled>(handle) else {
            return Err("expected a compiled function's handle".into());
        };
        if r::TYPEOF(args) != r::SEXPTYPE::VECSXP {
            return Err("expected a list of arguments".into());
        }
        (c, r::XLENGTH(args) as usize)
    };
    let mut xs = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `i` is within the protected list `args`, whose elements
        // it protects.
        let x = unsafe { r::VECTOR_ELT(args, i as r::R_xlen_t) };
        // SAFETY: `x` is protected by `args`.
        xs.push(match unsafe { get::<Array>(x) } {
            Some(a) => a.clone(),
            // SAFETY: `x` is valid; `from_sexp` protects it again.
            None => crate::argument(&unsafe { Robj::from_sexp(x) }),
        });
    }
    let (outs, tree) = compiled.compiled.call(&xs[..]).map_err(|e| crate::message(&e))?;
    drop(xs);
    crate::handed_to_r(outs.iter().map(crate::data_bytes).sum());
    if !tree.list {
        // SAFETY: the R nil value is a valid object.
        return Ok(outs.into_iter().next().map_or(unsafe { r::R_NilValue }, mlx));
    }
    // SAFETY: the list is protected while its elements and names are made;
    // each element is stored in it right after it is made (before the next
    // allocation).
    unsafe {
        let list = r::Rf_protect(r::Rf_allocVector(r::SEXPTYPE::VECSXP, outs.len() as r::R_xlen_t));
        for (i, a) in outs.into_iter().enumerate() {
            r::SET_VECTOR_ELT(list, i as r::R_xlen_t, mlx(a));
        }
        if let Some(names) = &tree.names {
            let v = r::Rf_protect(r::Rf_allocVector(r::SEXPTYPE::STRSXP, names.len() as r::R_xlen_t));
            for (i, name) in names.iter().enumerate() {
                let len = i32::try_from(name.len()).unwrap_or(i32::MAX);
                let ch = r::Rf_mkCharLenCE(name.as_ptr().cast(), len, r::cetype_t::CE_UTF8);
                r::SET_STRING_ELT(v, i as r::R_xlen_t, ch);
            }
            r::Rf_setAttrib(list, r::R_NamesSymbol, v);
            r::Rf_unprotect(1);
        }
        r::Rf_unprotect(1);
        Ok(list)
    }
}

/// extendr's module metadata plus [`kiln_call`], for registration.
pub fn metadata(mut meta: Metadata) -> Metadata {
    let arg = |name| Arg { name, arg_type: "SEXP", default: None };
    meta.functions.push(Func {
        doc: "Calls a compiled function (the hot path of mlx_compile).",
        rust_name: "kiln_call",
        mod_name: "kiln_call",
        r_name: "kiln_call",
        c_name: "kiln_call",
        args: vec![arg("handle"), arg("args")],
        return_type: "SEXP",
        func_ptr: kiln_call as *const u8,
        hidden: true,
        invisible: None,
    });
    meta
}

/// The package's init routine (called by `R_init_kiln` in `entrypoint.c`):
/// registers extendr's routines and [`kiln_call`].
///
/// # Safety
/// R calls it once, with the package's `DllInfo`, when it loads the library.
#[no_mangle]
pub unsafe extern "C" fn R_init_kiln_native(info: *mut r::DllInfo) {
    // SAFETY: `info` is the DllInfo R passed to the package's init routine.
    unsafe { extendr_api::register_call_methods(info, metadata(crate::get_kiln_metadata())) };
}
