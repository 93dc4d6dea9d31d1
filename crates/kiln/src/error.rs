//! One error type for the whole library. Every message says what went wrong,
//! names the operation and the offending shapes, axes or dtypes, and where it
//! can, says how to fix it.

use std::fmt;

use crate::dtype::DType;

/// Result alias used by every fallible kiln function.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when building or evaluating arrays.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Two shapes cannot be broadcast together.
    Broadcast {
        /// The operation that broadcasts.
        op: &'static str,
        /// Left operand's shape.
        lhs: Vec<usize>,
        /// Right operand's shape.
        rhs: Vec<usize>,
    },
    /// A shape is wrong for an operation (matmul inner dims, reshape sizes, ...).
    Shape {
        /// The operation that rejected the shape.
        op: &'static str,
        /// What is wrong, naming the shapes involved.
        msg: String,
    },
    /// An axis is out of range for an array of `ndim` dimensions.
    Axis {
        /// The operation.
        op: &'static str,
        /// The axis as given (may be negative).
        axis: isize,
        /// Number of dimensions of the array.
        ndim: usize,
    },
    /// The dtype is not supported by an operation.
    DType {
        /// The operation.
        op: &'static str,
        /// The rejected dtype.
        dtype: DType,
        /// Why, and what to do instead.
        msg: String,
    },
    /// Data given to build an array does not match its shape.
    DataLength {
        /// Expected number of elements (product of the shape).
        expected: usize,
        /// Number of elements given.
        got: usize,
        /// The shape.
        shape: Vec<usize>,
    },
    /// The element count of a shape overflows `usize`.
    Overflow {
        /// The operation.
        op: &'static str,
        /// The shape whose size overflows.
        shape: Vec<usize>,
    },
    /// An array would take more than `isize::MAX` bytes (Rust's limit for
    /// one allocation; for an empty array, counting its nonzero dimensions):
    /// rejected when the op is built.
    TooLarge {
        /// The operation.
        op: &'static str,
        /// The output shape.
        shape: Vec<usize>,
        /// The output dtype.
        dtype: DType,
    },
    /// Memory for an array could not be allocated: the allocator refused,
    /// or the request is above the limit set with
    /// [`set_memory_limit`](crate::set_memory_limit) (or `KILN_MEMORY_LIMIT`).
    OutOfMemory {
        /// The operation that allocates.
        op: &'static str,
        /// The bytes requested.
        bytes: usize,
    },
    /// A value was read from an array that depends on a placeholder while a
    /// function is being traced by `compile`.
    TracingValue {
        /// What tried to read the value (`to_vec`, `item`, `Display`, ...).
        what: &'static str,
        /// Names of the placeholder inputs the value depends on.
        inputs: Vec<String>,
    },
    /// The traced function itself failed (an error raised by user code, such
    /// as an R error inside a compiled R function), as opposed to an error of
    /// kiln's own. The message is the function's, kept as it was.
    Function {
        /// The function's own error message.
        msg: String,
    },
    /// An argument is invalid (bad parameter value, wrong element type, ...).
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A device problem: inputs on two devices, or a device without a
    /// backend in this build or on this machine.
    Device {
        /// The operation (or `"device"` when a device was asked for).
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
}

fn fmt_shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("({})", parts.join(", "))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Broadcast { op, lhs, rhs } => write!(
                f,
                "{op}: shapes {} and {} cannot be broadcast together \
                 (each dimension pair must be equal or one of them 1)",
                fmt_shape(lhs),
                fmt_shape(rhs)
            ),
            Error::Shape { op, msg } => write!(f, "{op}: {msg}"),
            Error::Axis { op, axis, ndim } => write!(
                f,
                "{op}: axis {axis} is out of range for an array with {ndim} dimension(s) \
                 (valid axes are {}..{})",
                -(*ndim as isize),
                ndim
            ),
            Error::DType { op, dtype, msg } => write!(f, "{op}: dtype {dtype} is not supported: {msg}"),
            Error::DataLength { expected, got, shape } => {
                write!(f, "from_slice: shape {} needs {expected} element(s) but {got} were given", fmt_shape(shape))
            }
            Error::Overflow { op, shape } => {
                write!(f, "{op}: the number of elements of shape {} overflows usize", fmt_shape(shape))
            }
            Error::TooLarge { op, shape, dtype } => write!(
                f,
                "{op}: an array of shape {} and dtype {dtype} is too large: its size in bytes (of an \
                 empty array, the product of its nonzero dimensions) exceeds isize::MAX, the most one \
                 allocation can hold",
                fmt_shape(shape)
            ),
            Error::OutOfMemory { op, bytes } => write!(
                f,
                "{op}: out of memory: could not allocate {bytes} bytes ({:.1} GiB){}",
                *bytes as f64 / (1u64 << 30) as f64,
                match crate::memory::memory_limit() {
                    Some(l) if *bytes > l => format!(", above the memory limit of {l} bytes (set_memory_limit or KILN_MEMORY_LIMIT)"),
                    _ => String::new(),
                }
            ),
            Error::TracingValue { what, inputs } => write!(
                f,
                "{what}: cannot read array values while tracing a compiled function: \
                 this value depends on {}, which is a placeholder that has a shape and dtype but no data \
                 (values only exist when the compiled function runs). Printing, reading values and \
                 control flow on array values are not allowed inside a compiled function. \
                 Fix: return the array as an output of the function and read it after the call, \
                 or disable compilation (kiln::disable_compile(), or KILN_DISABLE_COMPILE=1 or MLX_DISABLE_COMPILE=1) to debug eagerly.",
                if inputs.is_empty() { "an input".to_string() } else { inputs.join(", ") }
            ),
            Error::Function { msg } => write!(f, "{msg}"),
            Error::Invalid { op, msg } => write!(f, "{op}: {msg}"),
            Error::Device { op, msg } => write!(f, "{op}: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Formats a shape as `(a, b, c)` for error messages.
pub(crate) fn shape_str(s: &[usize]) -> String {
    fmt_shape(s)
}
