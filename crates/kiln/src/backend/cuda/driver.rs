//! The CUDA driver, NVRTC and cuBLAS as this backend uses them: loading the
//! libraries (with a clear error when they are missing, since `cudarc`
//! panics on a missing library), one context and stream per GPU, device
//! memory, module loading and kernel launches. Every call into the
//! libraries is in this file; the rest of the backend is safe code.

use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as cu, sys, CudaContext, CudaStream, DriverError};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use smallvec::SmallVec;

use crate::error::{Error, Result};

/// The shared libraries the backend loads, by soname. `KILN_CUDA_LIB_DIR`
/// names a folder to load them from first.
const LIBRARIES: [&str; 4] = ["libcuda.so.1", "libnvrtc.so.13", "libcublasLt.so.13", "libcublas.so.13"];

/// Loads the libraries from `KILN_CUDA_LIB_DIR` (once) and checks that the
/// driver and NVRTC can be found; the error says what is missing and how to
/// point kiln at it.
pub fn check_libraries() -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KILN_CUDA_LIB_DIR") {
            let dir = std::path::PathBuf::from(dir);
            for name in LIBRARIES {
                let path = dir.join(name);
                if path.exists() {
                    // SAFETY: loading a CUDA library runs its initializers,
                    // which have no preconditions; the handle is leaked so
                    // the library stays loaded and later loads by soname
                    // (cudarc's) find it.
                    match unsafe { libloading::Library::new(&path) } {
                        Ok(lib) => std::mem::forget(lib),
                        Err(e) => return Err(format!("KILN_CUDA_LIB_DIR: could not load {}: {e}", path.display())),
                    }
                }
            }
        }
        // SAFETY: these only try to open the libraries by name.
        let (driver, nvrtc) = unsafe { (sys::is_culib_present(), nvrtc_sys::is_culib_present()) };
        if !driver {
            return Err("the CUDA driver library (libcuda.so) was not found: install the NVIDIA driver, or set KILN_CUDA_LIB_DIR to the folder that holds it".into());
        }
        if !nvrtc {
            return Err("the NVRTC library (libnvrtc.so.13, CUDA 13) was not found: install CUDA 13's NVRTC (the nvidia-cuda-nvrtc wheel or the CUDA toolkit), add its folder to LD_LIBRARY_PATH, or set KILN_CUDA_LIB_DIR to it".into());
        }
        Ok(())
    });
    r.clone().map_err(|msg| Error::Device { op: "cuda", msg })
}

/// Whether cuBLAS can be loaded (checked once).
pub fn have_cublas() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the library by name.
    *HAVE.get_or_init(|| check_libraries().is_ok() && unsafe { cudarc::cublas::sys::is_culib_present() })
}

/// A driver error as kiln's error, for operation `op`.
pub fn err(op: &'static str, e: DriverError) -> Error {
    Error::Device { op, msg: format!("CUDA error: {e:?}") }
}

/// Number of CUDA devices (0 when the driver finds none).
pub fn device_count() -> Result<usize> {
    check_libraries()?;
    cu::init().map_err(|e| err("cuda", e))?;
    Ok(cu::device::get_count().map_err(|e| err("cuda", e))? as usize)
}

/// One GPU: its context, the stream every kernel and copy runs on, and its
/// loaded kernels.
pub struct Gpu {
    /// The device index.
    pub ordinal: usize,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Loaded kernels by source text.
    kernels: Mutex<std::collections::HashMap<String, Kernel>>,
    /// The cuBLAS handle, made on first use.
    blas: OnceLock<std::result::Result<BlasHandle, String>>,
    /// Freed small blocks kept for reuse.
    blocks: Mutex<Blocks>,
}

/// Freed device blocks of at most [`Blocks::LARGEST`] bytes, kept on the
/// host by size for the next allocation of that size, up to
/// [`Blocks::MOST`] bytes in all. Every kernel and copy of a GPU runs on
/// its one stream, so a block freed in stream order can be handed to later
/// work at once; keeping it here saves the driver's allocation and free
/// calls (about a microsecond each), which count in a small call's time.
/// Larger blocks go back to the driver's stream-ordered pool.
#[derive(Default)]
struct Blocks {
    free: std::collections::HashMap<usize, Vec<u64>>,
    bytes: usize,
}

impl Blocks {
    /// The largest block kept.
    const LARGEST: usize = 16 << 20;
    /// The most bytes kept in all.
    const MOST: usize = 256 << 20;

    /// The size class of an allocation of `bytes`: whole 256-byte units.
    fn class(bytes: usize) -> usize {
        bytes.max(1).div_ceil(256) * 256
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, sm_{}{})", self.ordinal, self.capability.0, self.capability.1)
    }
}

/// A loaded kernel function (its module stays loaded for the process).
#[derive(Clone, Copy, Debug)]
pub struct Kernel(sys::CUfunction);

// SAFETY: a CUfunction is a handle the driver lets any thread use.
unsafe impl Send for Kernel {}
// SAFETY: as above; launching does not mutate it.
unsafe impl Sync for Kernel {}

/// The kernels made for one step of a compiled program, by variant: a
/// number standing for whatever else the kernel's source depends on at a
/// launch (rank, index width, ...), the step's groups being fixed. A cache
/// hit then launches without writing or hashing the kernel's source. It
/// also keeps the step's last launch ([`Launch`]), so that a call like the
/// one before skips planning it.
#[derive(Debug, Default)]
pub struct Memo {
    kernels: Mutex<Vec<(u64, Kernel)>>,
    last: Mutex<Option<Launch>>,
}

/// A planned launch: for `key` (what the plan was computed from: the
/// space, the operands' strides and alignments), the kernel, its grid, and
/// the arguments after the pointers (sizes and strides).
#[derive(Debug)]
pub struct Launch {
    /// What the plan depends on.
    pub key: SmallVec<[i64; 32]>,
    /// The kernel.
    pub kernel: Kernel,
    /// Blocks of the grid.
    pub blocks: u32,
    /// The arguments that follow the pointers.
    pub tail: SmallVec<[Arg; 24]>,
}

impl Memo {
    /// The kernel of `variant`, made from `source()` (through
    /// [`Gpu::kernel`]) the first time.
    pub fn kernel(&self, gpu: &Gpu, variant: u64, source: impl FnOnce() -> String) -> Result<Kernel> {
        let found =
            self.kernels.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(v, _)| *v == variant).map(|e| e.1);
        if let Some(k) = found {
            return Ok(k);
        }
        let k = gpu.kernel(&source())?;
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).push((variant, k));
        Ok(k)
    }

    /// `f` of the last launch, when it was planned for `key` (read in
    /// place: a cache hit copies only what `f` takes).
    pub fn with_last_launch<R>(&self, key: &[i64], f: impl FnOnce(&Launch) -> R) -> Option<R> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|l| l.key[..] == *key).map(f)
    }

    /// Keeps `launch` as the last one.
    pub fn set_last_launch(&self, launch: Launch) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(launch);
    }
}

/// The kernel of `source()`: from `memo` at `variant` when there is one,
/// else through [`Gpu::kernel`].
pub fn kernel_of(gpu: &Gpu, memo: Option<(&Memo, u64)>, source: impl FnOnce() -> String) -> Result<Kernel> {
    match memo {
        Some((m, v)) => m.kernel(gpu, v, source),
        None => gpu.kernel(&source()),
    }
}

/// A number standing for `parts` (a memo's variant).
pub fn variant(parts: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

struct BlasHandle(cudarc::cublas::sys::cublasHandle_t);
// SAFETY: the handle is used under the `blas` lock only.
unsafe impl Send for BlasHandle {}
// SAFETY: as above.
unsafe impl Sync for BlasHandle {}

/// A kernel argument: a value passed by reference to the launch.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer.
    Ptr(u64),
    /// A 64-bit integer.
    I64(i64),
    /// A 32-bit integer.
    I32(i32),
    /// A double.
    F64(f64),
}

impl Gpu {
    /// Opens GPU `ordinal`: its primary context and a stream of its own;
    /// freed device memory is kept in the driver's pool for reuse.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Device {
                op: "cuda",
                msg: format!("cuda:{ordinal} was asked for, but this machine has {count} CUDA device(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err("cuda", e))?;
        // SAFETY: kiln runs everything on one stream, so cudarc's
        // cross-stream events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let capability = ctx.compute_capability().map_err(|e| err("cuda", e))?;
        let stream = ctx.new_stream().map_err(|e| err("cuda", e))?;
        // Keep freed blocks in the pool rather than returning them to the
        // driver at each synchronization (a cache hit then allocates from
        // the pool).
        // SAFETY: plain driver calls on this device's default pool.
        unsafe {
            let mut pool = std::mem::MaybeUninit::uninit();
            if sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
                let mut threshold: u64 = u64::MAX;
                let _ = sys::cuMemPoolSetAttribute(
                    pool.assume_init(),
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut threshold as *mut u64 as *mut c_void,
                );
            }
        }
        Ok(Gpu {
            ordinal,
            capability,
            ctx,
            stream,
            kernels: Mutex::default(),
            blas: OnceLock::new(),
            blocks: Mutex::default(),
        })
    }

    fn bind(&self, op: &'static str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| err(op, e))
    }

    /// Allocates `bytes` of device memory (stream-ordered), for `op`: a
    /// kept block of its size class when there is one (see [`Gpu::free`]),
    /// else from the driver's pool; when the device is out of memory, the
    /// kept blocks are given back and the allocation tried once more.
    pub fn alloc(&self, op: &'static str, bytes: usize) -> Result<u64> {
        let class = Blocks::class(bytes);
        if class <= Blocks::LARGEST {
            let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = b.free.get_mut(&class).and_then(|v| v.pop()) {
                b.bytes -= class;
                return Ok(p);
            }
        }
        self.bind(op)?;
        match self.malloc(class) {
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) if self.release_blocks() > 0 => {
                match self.malloc(class) {
                    Ok(p) => Ok(p),
                    Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => Err(Error::OutOfMemory { op, bytes }),
                    Err(e) => Err(err(op, e)),
                }
            }
            Ok(p) => Ok(p),
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => Err(Error::OutOfMemory { op, bytes }),
            Err(e) => Err(err(op, e)),
        }
    }

    fn malloc(&self, bytes: usize) -> std::result::Result<u64, DriverError> {
        // SAFETY: allocation on this GPU's stream (the context is bound);
        // the pointer is freed by `free` on the same stream.
        unsafe { cu::malloc_async(self.stream.cu_stream(), bytes) }
    }

    /// Frees memory from [`Gpu::alloc`] of `bytes` once the work queued
    /// before it is done: blocks of at most 16 MiB, up to 256 MiB in all,
    /// are kept for the next allocation of their size.
    pub fn free(&self, ptr: u64, bytes: usize) {
        let class = Blocks::class(bytes);
        if class <= Blocks::LARGEST {
            let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            if b.bytes + class <= Blocks::MOST {
                b.bytes += class;
                b.free.entry(class).or_default().push(ptr);
                return;
            }
        }
        self.driver_free(ptr);
    }

    fn driver_free(&self, ptr: u64) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from `alloc` and is freed once (its
            // storage's drop, or the kept blocks' release); stream order
            // keeps queued readers valid.
            let _ = unsafe { cu::free_async(ptr, self.stream.cu_stream()) };
        }
    }

    /// Gives every kept block back to the driver's pool; returns the bytes.
    pub fn release_blocks(&self) -> usize {
        let blocks = std::mem::take(&mut *self.blocks.lock().unwrap_or_else(|e| e.into_inner()));
        for p in blocks.free.into_values().flatten() {
            self.driver_free(p);
        }
        blocks.bytes
    }

    /// Copies host bytes to device memory at `dst` (which holds at least as many).
    pub fn upload<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind("upload")?;
        // SAFETY: `dst` holds `size_of_val(src)` bytes (the caller
        // allocated it for them). `src` is pageable memory: an asynchronous
        // copy from it returns once the driver has staged its bytes, so
        // `src` may go away at once; the copy itself stays in stream order
        // (no wait for the work queued before it).
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(|e| err("upload", e))
    }

    /// Copies device memory at `src` into `dst` and waits for it.
    pub fn download<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind("to_host")?;
        // SAFETY: `src` holds at least `size_of_val(dst)` bytes (the caller
        // checks the storage's length); we wait for the copy before `dst`
        // is used.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(|e| err("to_host", e))?;
        self.sync("to_host")
    }

    /// Waits for all work queued on this GPU.
    pub fn sync(&self, op: &'static str) -> Result<()> {
        self.bind(op)?;
        // SAFETY: the stream is alive for the process.
        unsafe { cu::stream::synchronize(self.stream.cu_stream()) }.map_err(|e| err(op, e))
    }

    /// The kernel `k` of `source`, compiled by NVRTC to a cubin for this
    /// GPU on first use and kept for the process.
    pub fn kernel(&self, source: &str) -> Result<Kernel> {
        if let Some(k) = self.kernels.lock().unwrap_or_else(|e| e.into_inner()).get(source) {
            return Ok(*k);
        }
        let t0 = std::time::Instant::now();
        let cubin = cached_compile(source, self.capability)?;
        let t1 = std::time::Instant::now();
        self.bind("cuda")?;
        // SAFETY: `cubin` is a complete cubin image from NVRTC; the module
        // is never unloaded, so the function handle stays valid.
        let f = unsafe {
            let module = cu::module::load_data(cubin.as_ptr() as *const c_void).map_err(|e| err("cuda", e))?;
            cu::module::get_function(module, CString::new("k").expect("no NUL")).map_err(|e| err("cuda", e))?
        };
        if trace() {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            eprintln!(
                "kiln cuda: kernel of {} bytes of source: cubin in {:.1} ms, loaded in {:.1} ms",
                source.len(),
                ms(t1 - t0),
                ms(t1.elapsed())
            );
        }
        let k = Kernel(f);
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).insert(source.to_string(), k);
        Ok(k)
    }

    /// Launches `k` over `blocks` blocks of `threads` threads with `shared`
    /// bytes of dynamic shared memory.
    pub fn launch(&self, k: Kernel, blocks: u32, threads: u32, shared: u32, args: &[Arg]) -> Result<()> {
        self.bind("launch")?;
        let bytes = |a: &Arg| match *a {
            Arg::Ptr(p) => p.to_ne_bytes(),
            Arg::I64(v) => v.to_ne_bytes(),
            Arg::F64(v) => v.to_ne_bytes(),
            Arg::I32(v) => {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&v.to_ne_bytes());
                b
            }
        };
        // The values and pointers to them, on the stack for the usual
        // argument counts (no allocation per launch).
        let mut vals: smallvec::SmallVec<[[u8; 8]; 48]> = args.iter().map(bytes).collect();
        let mut params: smallvec::SmallVec<[*mut c_void; 48]> =
            vals.iter_mut().map(|v| v.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: `k` was compiled from source whose parameter list matches
        // `args` in order and type (the caller builds both); each parameter
        // points at 8 bytes that outlive the call, which copies them.
        unsafe { cu::launch_kernel(k.0, (blocks, 1, 1), (threads, 1, 1), shared, self.stream.cu_stream(), &mut params) }
            .map_err(|e| err("launch", e))
    }

    /// Runs `f` with this GPU's cuBLAS handle (made on first use, bound to
    /// the stream).
    pub fn with_blas<R>(&self, f: impl FnOnce(cudarc::cublas::sys::cublasHandle_t) -> Result<R>) -> Result<R> {
        let h = self.blas.get_or_init(|| {
            if !have_cublas() {
                return Err("cuBLAS (libcublas.so.13) was not found".into());
            }
            self.ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
            let h = cudarc::cublas::result::create_handle().map_err(|e| format!("{e:?}"))?;
            // SAFETY: a fresh handle and this GPU's live stream.
            unsafe { cudarc::cublas::result::set_stream(h, self.stream.cu_stream() as *mut _) }
                .map_err(|e| format!("{e:?}"))?;
            Ok(BlasHandle(h))
        });
        match h {
            Ok(h) => {
                static LOCK: Mutex<()> = Mutex::new(());
                let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
                self.bind("matmul")?;
                f(h.0)
            }
            Err(msg) => Err(Error::Device { op: "matmul", msg: msg.clone() }),
        }
    }
}

/// Whether `KILN_CUDA_TRACE` is set: each kernel made (compiled by NVRTC
/// or read from the disk cache) is then reported on stderr with its times.
fn trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KILN_CUDA_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// NVRTC's options for every kernel (besides the architecture): no
/// contraction of `a * b + c` into one rounding, so kernels compute what
/// the CPU's do (explicit `fmaf` calls still fuse); `--minimal` leaves out
/// the CUDA runtime's declarations that generated kernels never use
/// (textures, device-side launches), which shortens every compilation.
const NVRTC_OPTIONS: [&str; 3] = ["--fmad=false", "--std=c++17", "--minimal"];

/// The folder of the on-disk kernel cache: `KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`, with `cuda/` below it;
/// `None` when none can be named or `KILN_CACHE_DIR` is `off`.
fn cache_dir() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("KILN_CACHE_DIR") {
        Some(d) if d == "off" => return None,
        Some(d) => std::path::PathBuf::from(d),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) => std::path::PathBuf::from(d).join("kiln"),
            None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/kiln"),
        },
    };
    Some(base.join("cuda"))
}

/// NVRTC's version (major, minor).
fn nvrtc_version() -> (i32, i32) {
    static V: OnceLock<(i32, i32)> = OnceLock::new();
    *V.get_or_init(|| {
        let (mut a, mut b) = (0, 0);
        // SAFETY: writes two ints.
        let _ = unsafe { nvrtc_sys::nvrtcVersion(&mut a, &mut b) };
        (a, b)
    })
}

/// [`compile`] through the on-disk cache: a cubin is stored under a hash
/// of everything that decides it (the source, NVRTC's version, the
/// architecture and the options), with that key written in the file
/// before the cubin and compared on reading (so a hash collision is a
/// miss, never a wrong kernel). Files are written to a temporary name and
/// renamed into place, so concurrent processes never read half a file. A
/// cache that cannot be read or written is skipped silently.
fn cached_compile(source: &str, cap: (i32, i32)) -> Result<Vec<u8>> {
    use std::hash::{Hash, Hasher};
    let (ma, mi) = nvrtc_version();
    let key = format!("nvrtc {ma}.{mi} sm_{}{} {}\n{source}", cap.0, cap.1, NVRTC_OPTIONS.join(" "));
    let Some(dir) = cache_dir() else { return compile(source, cap) };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let path = dir.join(format!("{:016x}-{}.cubin", h.finish(), key.len()));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Some(rest) = bytes.strip_prefix(key.as_bytes()) {
            if let Some(cubin) = rest.strip_prefix(b"\0") {
                return Ok(cubin.to_vec());
            }
        }
    }
    let cubin = compile(source, cap)?;
    if std::fs::create_dir_all(&dir).is_ok() {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.{n}.{:016x}.tmp", std::process::id(), h.finish()));
        let mut data = Vec::with_capacity(key.len() + 1 + cubin.len());
        data.extend_from_slice(key.as_bytes());
        data.push(0);
        data.extend_from_slice(&cubin);
        if std::fs::write(&tmp, &data).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(cubin)
}

/// Compiles `source` to a cubin for a GPU of compute capability `cap`.
fn compile(source: &str, cap: (i32, i32)) -> Result<Vec<u8>> {
    let src = CString::new(source).map_err(|_| Error::Device { op: "nvrtc", msg: "source holds a NUL".into() })?;
    let prog = nvrtc::create_program(&src, None)
        .map_err(|e| Error::Device { op: "nvrtc", msg: format!("could not create a program: {e:?}") })?;
    let arch = format!("--gpu-architecture=sm_{}{}", cap.0, cap.1);
    let mut opts = vec![arch.as_str()];
    opts.extend(NVRTC_OPTIONS);
    // SAFETY: `prog` is a live program from `create_program`, destroyed
    // once below; NVRTC writes at most the sizes it reports.
    unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let out = match compiled {
            Err(_) => {
                let log = nvrtc::get_program_log(prog).unwrap_or_default();
                let log: String = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
                Err(Error::Device {
                    op: "nvrtc",
                    msg: format!("a generated kernel did not compile (a kiln bug):\n{log}\n{source}"),
                })
            }
            Ok(()) => {
                let mut n = 0usize;
                let mut r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut n).result();
                let mut v = vec![0u8; n];
                if r.is_ok() {
                    r = nvrtc_sys::nvrtcGetCUBIN(prog, v.as_mut_ptr() as *mut _).result();
                }
                r.map(|_| v).map_err(|e| Error::Device { op: "nvrtc", msg: format!("no cubin: {e:?}") })
            }
        };
        let _ = nvrtc::destroy_program(prog);
        out
    }
}

/// One operand of [`Gpu::gemm`]: a column-major matrix at `ptr` with
/// leading dimension `ld`, used transposed when `trans`, and `stride`
/// elements between the matrices of a batch (0: the same for all).
#[derive(Clone, Copy, Debug)]
pub struct GemmOperand {
    /// Device address of the first matrix.
    pub ptr: u64,
    /// Leading dimension (elements between columns).
    pub ld: i32,
    /// Use the matrix transposed.
    pub trans: bool,
    /// Elements between consecutive matrices of the batch.
    pub stride: i64,
}

impl Gpu {
    /// `c = op(a) · op(b)` for `batch` column-major products of `m x k` by
    /// `k x n` through cuBLAS, of `dtype` `F32`, `F64`, `F16` or `BF16`
    /// (the half types accumulate in `f32`). `f32` products are true `f32`
    /// (cuBLAS's `sgemm`), or TF32 (`CUBLAS_COMPUTE_32F_FAST_TF32`) while
    /// [`crate::matmul_precision`] allows it.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dtype: crate::DType,
        (m, n, k): (i32, i32, i32),
        a: GemmOperand,
        b: GemmOperand,
        c: (u64, i32, i64),
        batch: i32,
    ) -> Result<()> {
        use cudarc::cublas::{result as blas, sys as bsys};
        let op = |t: bool| if t { bsys::cublasOperation_t::CUBLAS_OP_T } else { bsys::cublasOperation_t::CUBLAS_OP_N };
        let tf32 = dtype == crate::DType::F32 && crate::matmul_precision() == crate::MatmulPrecision::Tf32;
        self.with_blas(|h| {
            // SAFETY: the caller passes device addresses of allocations that
            // hold every element the dimensions, leading dimensions and
            // batch strides reach, of `dtype`; alpha and beta live on this
            // stack frame for the synchronous setup of the call.
            let r = unsafe {
                match dtype {
                    crate::DType::F32 if !tf32 => {
                        let (one, zero) = (1.0f32, 0.0f32);
                        blas::sgemm_strided_batched(
                            h,
                            op(a.trans),
                            op(b.trans),
                            m,
                            n,
                            k,
                            &one,
                            a.ptr as *const f32,
                            a.ld,
                            a.stride,
                            b.ptr as *const f32,
                            b.ld,
                            b.stride,
                            &zero,
                            c.0 as *mut f32,
                            c.1,
                            c.2,
                            batch,
                        )
                    }
                    crate::DType::F64 => {
                        let (one, zero) = (1.0f64, 0.0f64);
                        blas::dgemm_strided_batched(
                            h,
                            op(a.trans),
                            op(b.trans),
                            m,
                            n,
                            k,
                            &one,
                            a.ptr as *const f64,
                            a.ld,
                            a.stride,
                            b.ptr as *const f64,
                            b.ld,
                            b.stride,
                            &zero,
                            c.0 as *mut f64,
                            c.1,
                            c.2,
                            batch,
                        )
                    }
                    _ => {
                        let (ty, compute) = match dtype {
                            crate::DType::F32 => (
                                bsys::cudaDataType::CUDA_R_32F,
                                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                            ),
                            crate::DType::F16 => {
                                (bsys::cudaDataType::CUDA_R_16F, bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F)
                            }
                            _ => (bsys::cudaDataType::CUDA_R_16BF, bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
                        };
                        let (one, zero) = (1.0f32, 0.0f32);
                        blas::gemm_strided_batched_ex(
                            h,
                            op(a.trans),
                            op(b.trans),
                            m,
                            n,
                            k,
                            &one as *const f32 as *const c_void,
                            a.ptr as *const c_void,
                            ty,
                            a.ld,
                            a.stride,
                            b.ptr as *const c_void,
                            ty,
                            b.ld,
                            b.stride,
                            &zero as *const f32 as *const c_void,
                            c.0 as *mut c_void,
                            ty,
                            c.1,
                            c.2,
                            batch,
                            compute,
                            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                        )
                    }
                }
            };
            r.map_err(|e| Error::Device { op: "matmul", msg: format!("cuBLAS error: {e:?}") })
        })
    }
}
