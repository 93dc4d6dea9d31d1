//! `compile(f)`: trace once, optimize, fuse, cache, and run the cached
//! executable on later calls.
//!
//! ```
//! use kiln::{compile, Array};
//! let f = compile(|x: &Array, y: &Array| -> kiln::Result<Array> { (x * y)? + 1.0f32 });
//! let x = Array::from_slice(&[1.0f32, 2.0], &[2])?;
//! let y = Array::from_slice(&[3.0f32, 4.0], &[2])?;
//! let r = f.call((&x, &y))?; // first call: traces f, then runs the compiled kernels
//! assert_eq!(r.to_vec::<f32>()?, vec![4.0, 9.0]);
//! let r = f.call((&y, &x))?; // same shapes and dtypes: cached, f is not called
//! assert_eq!(f.stats().traces, 1);
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! How it works, as in MLX:
//! 1. [`compile`] returns at once; nothing is traced.
//! 2. On a call whose input signature (number of arguments; each argument's
//!    dtype, number of dimensions and, unless shapeless, shape) has no cache
//!    entry, `f` runs once on *placeholder* arrays that have a shape and
//!    dtype but no data. The recorded graph becomes a program that is
//!    optimized (no-op removal, common subexpressions, dead code), fused
//!    into kernels, cached, and run on the real inputs.
//! 3. Calls with a known signature run the cached kernels and do not call `f`.
//!
//! Rules for `f`, as in the seed contract: it takes arrays and returns
//! arrays; it must be pure. Reading values while tracing (`to_vec`, `item`,
//! printing values, control flow on array values) is an error that names the
//! input involved and says how to fix it. Arrays captured from the
//! environment are constants frozen at trace time (a captured lazy array is
//! computed once, during tracing); pass values that change between calls as
//! arguments (0-d arrays are fine): that never recompiles.
//! With [`CompileOptions::shapeless`], a shape change reuses the compiled
//! program, while a dtype or ndim change still recompiles. A call on new
//! shapes re-infers every instruction's shape with the rule eager
//! evaluation uses ([`Primitive::infer`](crate::primitive::Primitive::infer)),
//! from its parameters and the new input shapes; a fused kernel whose
//! values no longer share one iteration space at those shapes runs op by op
//! (see [`Executable::run`](crate::backend::Executable::run)). Parameters keep what the user asked
//! for, so results match eager evaluation on the new shapes: `squeeze`,
//! `expand_dims` and `matmul` of vectors keep axes, `split` keeps its count
//! of sections, `broadcast_arrays` and `*_like` ops (`zeros_like`,
//! `random::normal_like`, ...) keep the arrays they follow. Literal
//! parameters stay literal, as in eager evaluation: `reshape` to fixed dims
//! (-1 is re-inferred), `broadcast_to` a fixed shape, slices with fixed
//! bounds, `split_at` indices, random draws of a fixed shape. Where they no
//! longer fit the new shapes (or where `squeeze` of every size-1 axis would
//! remove other axes), the call fails with an error naming the op, its
//! traced output shape and its new input shapes. Shapes read in Rust while
//! tracing (`x.shape()`, or `softmax`'s branch on an empty axis) are frozen.
//!
//! Random numbers: the random key is an implicit input of every compiled
//! function. A function that draws random numbers (with `key: None`) gets
//! a fresh key split off the global key on each call, so each call gives new
//! numbers and the global key advances as if it were an output; after
//! `random::seed(s)` the sequence repeats.
//!
//! Threads and re-entrancy: a compiled function can be called from many
//! threads at once; one signature is traced once, and calls racing that trace
//! wait for it (they count as cache hits, see [`CacheStats`]). At most
//! [`CompileOptions::max_cache_entries`] programs stay cached. A call from
//! inside a trace with lazy (traced) arguments inlines `f`; one with
//! evaluated arguments uses the cache, and if its signature is the one this
//! thread is tracing (the function calls itself while being traced) it fails
//! with an `Error::Invalid` instead of waiting for itself.
//!
//! Debugging: [`disable_compile`] (or `KILN_DISABLE_COMPILE=1`, or MLX's
//! `MLX_DISABLE_COMPILE=1`) makes every
//! compiled function call `f` directly, eagerly, so values can be printed.

mod cache;
mod explain;
mod signature;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::array::{Array, Data};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::program::Program;

pub use cache::CacheStats;
use cache::{Cache, Entry};
use signature::Signature;

pub use crate::trace::is_tracing;

static DISABLED: AtomicBool = AtomicBool::new(false);
static ENV_DISABLED: OnceLock<bool> = OnceLock::new();

/// Makes every compiled function run `f` eagerly (for debugging: printing
/// and reading values work again).
pub fn disable_compile() {
    DISABLED.store(true, Ordering::SeqCst);
}

/// Re-enables compilation after [`disable_compile`].
pub fn enable_compile() {
    DISABLED.store(false, Ordering::SeqCst);
}

/// True when compiled functions run eagerly ([`disable_compile`], or
/// `KILN_DISABLE_COMPILE` or MLX's `MLX_DISABLE_COMPILE` set to `1` or `true`
/// when the process first asks).
pub fn compile_disabled() -> bool {
    DISABLED.load(Ordering::Relaxed)
        || *ENV_DISABLED.get_or_init(|| {
            ["KILN_DISABLE_COMPILE", "MLX_DISABLE_COMPILE"]
                .iter()
                .any(|name| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")))
        })
}

/// Options for [`compile_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    /// Keep one compiled program across input shape changes (dtype and ndim
    /// changes still recompile).
    pub shapeless: bool,
    /// Maximum number of cached programs (least recently used is evicted).
    pub max_cache_entries: usize,
    /// After this many traces, log one warning (with the last miss reason).
    pub recompile_warning: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { shapeless: false, max_cache_entries: 64, recompile_warning: 16 }
    }
}

/// What a traced function returns: one array, a tuple of arrays, a `Vec`,
/// or a `Result` of any of these.
///
/// An output is its arrays plus a [`Outputs::Tree`]: whatever else describes
/// the returned value (as a pytree's structure in JAX). The tree of the value
/// returned while tracing is kept with the cache entry, and every later call
/// served by that entry rebuilds its value from the new arrays and that tree
/// (for an R binding, whether the function returned a list and its names).
pub trait Outputs: Sized {
    /// The value a compiled call returns (inside `Result`).
    type Value;
    /// The structure besides the arrays (`()` for Rust's fixed shapes).
    type Tree: Send + Sync + 'static;
    /// Flattens to arrays (in order) and the structure around them.
    fn into_arrays(self) -> Result<(Vec<Array>, Self::Tree)>;
    /// Rebuilds the returned value from arrays (in order) and its structure.
    fn from_arrays(v: Vec<Array>, tree: &Self::Tree) -> Self::Value;
}

impl Outputs for Array {
    type Value = Array;
    type Tree = ();
    fn into_arrays(self) -> Result<(Vec<Array>, ())> {
        Ok((vec![self], ()))
    }
    fn from_arrays(mut v: Vec<Array>, _: &()) -> Array {
        v.pop().expect("one output")
    }
}

impl Outputs for Vec<Array> {
    type Value = Vec<Array>;
    type Tree = ();
    fn into_arrays(self) -> Result<(Vec<Array>, ())> {
        Ok((self, ()))
    }
    fn from_arrays(v: Vec<Array>, _: &()) -> Vec<Array> {
        v
    }
}

impl<T: Outputs> Outputs for Result<T> {
    type Value = T::Value;
    type Tree = T::Tree;
    fn into_arrays(self) -> Result<(Vec<Array>, T::Tree)> {
        self?.into_arrays()
    }
    fn from_arrays(v: Vec<Array>, tree: &T::Tree) -> T::Value {
        T::from_arrays(v, tree)
    }
}

macro_rules! tuple_outputs {
    ($($n:literal: $($t:ident)*;)*) => {$(
        impl Outputs for ($(tuple_outputs!(@arr $t),)*) {
            type Value = Self;
            type Tree = ();
            #[allow(non_snake_case)]
            fn into_arrays(self) -> Result<(Vec<Array>, ())> {
                let ($($t,)*) = self;
                Ok((vec![$($t),*], ()))
            }
            fn from_arrays(v: Vec<Array>, _: &()) -> Self {
                let mut it = v.into_iter();
                ($(tuple_outputs!(@next it $t),)*)
            }
        }
    )*};
    (@arr $t:ident) => { Array };
    (@next $it:ident $t:ident) => { $it.next().expect("output count matches") };
}
tuple_outputs! {
    2: A B;
    3: A B C;
    4: A B C D;
    5: A B C D E;
    6: A B C D E F;
}

/// A function of arrays that can be traced. Implemented for closures of 1
/// to 8 `&Array` arguments and for `Fn(&[Array])` (any number). The function
/// need not be `Send` or `Sync` (a closure holding an R function is neither);
/// the compiled function is then neither.
pub trait TraceFn<Args> {
    /// What the function returns.
    type Out: Outputs;
    /// The fixed number of arguments, or `None` for the slice form.
    fn arity(&self) -> Option<usize>;
    /// Calls the function on `args` (their count was checked).
    fn invoke(&self, args: &[Array]) -> Self::Out;
}

/// Marker for the slice form `Fn(&[Array])`.
pub struct SliceArgs;

impl<F, O> TraceFn<SliceArgs> for F
where
    F: Fn(&[Array]) -> O,
    O: Outputs,
{
    type Out = O;
    fn arity(&self) -> Option<usize> {
        None
    }
    fn invoke(&self, args: &[Array]) -> O {
        self(args)
    }
}

macro_rules! fixed_arity {
    ($($n:literal: $($i:literal)*;)*) => {$(
        impl<F, O> TraceFn<[Array; $n]> for F
        where
            F: Fn($(fixed_arity!(@ref $i)),*) -> O,
            O: Outputs,
        {
            type Out = O;
            fn arity(&self) -> Option<usize> {
                Some($n)
            }
            fn invoke(&self, args: &[Array]) -> O {
                self($(&args[$i]),*)
            }
        }
    )*};
    (@ref $i:literal) => { &Array };
}
fixed_arity! {
    1: 0;
    2: 0 1;
    3: 0 1 2;
    4: 0 1 2 3;
    5: 0 1 2 3 4;
    6: 0 1 2 3 4 5;
    7: 0 1 2 3 4 5 6;
    8: 0 1 2 3 4 5 6 7;
}

/// Arguments of a compiled call: a tuple of `&Array` (1 to 8), a slice of
/// arrays, or a slice of array references.
pub trait CallArgs {
    /// Calls `f` with the arguments as a slice of references.
    fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R;
}

impl CallArgs for &[Array] {
    fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R {
        let v: Vec<&Array> = self.iter().collect();
        f(&v)
    }
}

impl CallArgs for &Vec<Array> {
    fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R {
        self.as_slice().with(f)
    }
}

impl CallArgs for &[&Array] {
    fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R {
        f(self)
    }
}

impl CallArgs for &Array {
    fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R {
        f(&[self])
    }
}

macro_rules! tuple_args {
    ($($n:literal: $($t:ident)*;)*) => {$(
        impl<'a> CallArgs for ($(tuple_args!(@ref $t),)*) {
            #[allow(non_snake_case)]
            fn with<R>(self, f: impl FnOnce(&[&Array]) -> R) -> R {
                let ($($t,)*) = self;
                f(&[$($t),*])
            }
        }
    )*};
    (@ref $t:ident) => { &'a Array };
}
tuple_args! {
    1: A;
    2: A B;
    3: A B C;
    4: A B C D;
    5: A B C D E;
    6: A B C D E F;
    7: A B C D E F G;
    8: A B C D E F G H;
}

/// A compiled function. Cheap to clone (shared cache); `Send + Sync`, and
/// callable from many threads at once, when `f` is.
pub struct Compiled<F, Args> {
    inner: Arc<Inner<F>>,
    _args: PhantomData<fn(Args)>,
}

impl<F, Args> Clone for Compiled<F, Args> {
    fn clone(&self) -> Self {
        Compiled { inner: Arc::clone(&self.inner), _args: PhantomData }
    }
}

struct Inner<F> {
    f: F,
    options: CompileOptions,
    cache: Cache,
}

/// Compiles `f` with default options. Returns at once: `f` is traced on the
/// first call.
pub fn compile<F, Args>(f: F) -> Compiled<F, Args>
where
    F: TraceFn<Args>,
{
    compile_with(f, CompileOptions::default())
}

/// Compiles `f` with `options` (e.g. `shapeless`).
pub fn compile_with<F, Args>(f: F, options: CompileOptions) -> Compiled<F, Args>
where
    F: TraceFn<Args>,
{
    let cache = Cache::new(options.max_cache_entries);
    Compiled { inner: Arc::new(Inner { f, options, cache }), _args: PhantomData }
}

/// The device a call runs on: its arguments' one device (two devices are an
/// error naming both), or the default device when there are no arguments.
fn call_device(args: &[&Array]) -> Result<crate::device::Device> {
    Ok(crate::device::common("compiled call", args.iter().map(|a| (*a).clone()).collect())?.0)
}

fn describe_args(args: &[&Array]) -> Vec<String> {
    args.iter()
        .enumerate()
        .map(|(i, a)| format!("argument {i} ({})", signature::describe(a.dtype(), a.shape())))
        .collect()
}

impl<F: TraceFn<Args>, Args> Compiled<F, Args> {
    /// Calls the compiled function.
    pub fn call(&self, args: impl CallArgs) -> Result<<F::Out as Outputs>::Value> {
        args.with(|a| self.call_slice(a))
    }

    fn check_arity(&self, args: &[&Array]) -> Result<()> {
        match self.inner.f.arity() {
            Some(n) if n != args.len() => Err(Error::Invalid {
                op: "compiled call",
                msg: format!("the function takes {n} argument(s), {} were given", args.len()),
            }),
            _ => Ok(()),
        }
    }

    fn call_eager(&self, args: &[&Array]) -> Result<<F::Out as Outputs>::Value> {
        let owned: Vec<Array> = args.iter().map(|a| (*a).clone()).collect();
        let (outs, tree) = self.inner.f.invoke(&owned).into_arrays()?;
        Ok(F::Out::from_arrays(outs, &tree))
    }

    /// The cached entry for `args`' signature, tracing on a miss.
    fn cached(&self, args: &[&Array]) -> Result<Arc<Entry>> {
        let sig = Signature::of(args, self.inner.options.shapeless);
        self.inner.cache.get_or_trace(&sig, || self.trace(args), &self.inner.options)
    }

    /// Like [`Self::cached`], checking the argument count first (explain, DOT).
    fn entry(&self, args: &[&Array]) -> Result<Arc<Entry>> {
        self.check_arity(args)?;
        self.cached(args)
    }

    fn call_slice(&self, args: &[&Array]) -> Result<<F::Out as Outputs>::Value> {
        self.check_arity(args)?;
        // 0-d arguments holding data on another device join the others'
        // device, as they do in eager ops.
        let owned;
        let moved: smallvec::SmallVec<[&Array; 8]>;
        let args = match args.iter().all(|a| a.device() == args[0].device()) {
            true => args,
            false => {
                owned = crate::device::common("compiled call", args.iter().map(|a| (*a).clone()).collect())?.1;
                moved = owned.iter().collect();
                &moved[..]
            }
        };
        // Debugging mode, or a call from inside another trace: run `f` itself
        // (inside a trace this inlines `f` into the outer graph).
        if compile_disabled() || (is_tracing() && args.iter().any(|a| !a.is_evaluated())) {
            return self.call_eager(args);
        }
        let entry = self.cached(args)?;
        // Random draws inside `f` come from a fresh split of the global key on
        // every call, so each call gives new numbers, reproducibly after `seed`.
        // The key goes to the device the function runs on (a no-op on the CPU).
        let key = match entry.uses_random {
            true => Some(crate::ops::random::next_key_for_call().to_device(call_device(args)?)?),
            false => None,
        };
        let mut datas: smallvec::SmallVec<[&Data; 8]> =
            args.iter().map(|a| a.evaluated("compiled call")).collect::<Result<_>>()?;
        if let Some(k) = &key {
            datas.push(k.data().expect("host keys hold data"));
        }
        let outs = run_entry(&entry, &datas)?;
        let tree = entry.tree.downcast_ref::<<F::Out as Outputs>::Tree>().expect("an entry's tree comes from this F");
        Ok(F::Out::from_arrays(outs.into_iter().map(Array::from_valid_data).collect(), tree))
    }

    /// Traces `f` on placeholders shaped like `args` and builds the executable.
    fn trace(&self, args: &[&Array]) -> Result<Entry> {
        let device = call_device(args)?;
        let mut names = describe_args(args);
        names.push("the implicit random key".into());
        let arg_sigs: Vec<_> = args.iter().map(|a| (a.shape().to_vec(), a.dtype(), a.device())).collect();
        let traced = crate::trace::record(&arg_sigs, device, names, |ps| self.inner.f.invoke(ps).into_arrays())?;
        let (placeholders, uses_random) = (traced.placeholders, traced.uses_random);
        let (outputs, tree) = traced.result?;
        let mut program = Program::from_graph(&placeholders, &outputs)?;
        let traced_instrs = program.instrs.len();
        let backend: &dyn Backend = crate::backend::for_device(device)?;
        crate::passes::optimize(&mut program, self.inner.options.shapeless, backend.facts());
        let exe = backend.lower(program)?;
        let traced_shapes = args.iter().map(|a| a.shape().to_vec()).collect();
        Ok(Entry { exe, traced_shapes, traced_instrs, uses_random, tree: Box::new(tree) })
    }

    /// Counters: traces, cache hits and misses, live entries.
    pub fn stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Drops every cached program (the next call traces again).
    pub fn clear_cache(&self) {
        self.inner.cache.clear()
    }

    /// The optimized program for `args` as text (tracing it if needed, which
    /// counts as a miss): each kernel, the ops it fuses, its inputs and
    /// outputs, the bytes it moves; then the reason for every cache miss so far.
    pub fn explain(&self, args: impl CallArgs) -> Result<String> {
        let entry = args.with(|a| self.entry(a))?;
        Ok(explain::text(entry.exe.as_ref(), entry.traced_instrs, &self.inner.cache.miss_reasons()))
    }

    /// The optimized graph for `args` in Graphviz DOT, fused kernels drawn as clusters.
    pub fn to_dot(&self, args: impl CallArgs) -> Result<String> {
        let entry = args.with(|a| self.entry(a))?;
        Ok(explain::dot(entry.exe.as_ref()))
    }
}

/// Runs a cached entry, re-inferring shapes when they differ from the traced ones.
fn run_entry(entry: &Entry, args: &[&Data]) -> Result<Vec<Data>> {
    let same = entry.traced_shapes.iter().zip(args).all(|(s, d)| crate::shape::same(s, &d.layout().shape));
    if same {
        return entry.exe.run(args, None);
    }
    let arg_shapes: Vec<&[usize]> = args.iter().map(|d| d.layout().shape.as_slice()).collect();
    let shapes = entry.exe.program().infer_shapes(&arg_shapes)?;
    entry.exe.run(args, Some(&shapes))
}
