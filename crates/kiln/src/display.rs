//! `Display` for arrays, following NumPy's `repr` (default print options:
//! line width 75, threshold 1000, 3 edge items, float precision 8 in
//! "maxprec" mode), except that the dtype is always shown:
//!
//! ```text
//! array([[1, 2],
//!        [3, 4]], dtype=int32)
//! array([ 1. ,  2.5, -3. ], dtype=float32)
//! array([], shape=(0, 3), dtype=float32)
//! ```
//!
//! Floats print with the shortest digits that identify the value in its own
//! dtype (so `f16` 0.1 prints as `0.1`), at most 8 fractional digits, padded
//! so the decimal points line up; scientific notation is used when the
//! magnitudes are very large, very small or span more than a factor of 1000.
//! Arrays with more than 1000 elements show 3 items at each edge of each axis
//! around `...` and add their shape.
//!
//! `Display` cannot return a kiln error, so an array that cannot be evaluated
//! prints as `<error: ...>`; [`Array::to_string_checked`] returns the error
//! instead (for example the tracing error inside a compiled function).

use std::fmt;

use crate::array::{Array, Data};
use crate::dtype::{DType, Element};
use crate::error::Result;

const LINE_WIDTH: usize = 75;
const THRESHOLD: usize = 1000;
const EDGE_ITEMS: usize = 3;
const PRECISION: usize = 8;
const PREFIX: &str = "array(";

impl Array {
    /// The NumPy-style text of the array (what `Display` prints), or the
    /// error that prevents evaluating it.
    ///
    /// ```
    /// let a = kiln::Array::from_slice(&[1i32, 2, 3, 4], &[2, 2])?;
    /// assert_eq!(a.to_string_checked()?, "array([[1, 2],\n       [3, 4]], dtype=int32)");
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn to_string_checked(&self) -> Result<String> {
        let data = self.evaluated("Display")?;
        render(data, self.shape(), self.dtype())
    }
}

impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_string_checked() {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<error: {e}>"),
        }
    }
}

/// Python's repr of a shape tuple: `()`, `(3,)`, `(2, 3)`.
fn tuple_str(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// The elements shown, read from the buffer.
enum Vals {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// The elements at the kept positions of each axis (row-major over the kept
/// positions), converted for formatting.
/// Data on another device is copied to the host first.
fn read_kept(data: &Data, kept: &[Vec<usize>], dtype: DType) -> crate::Result<Vals> {
    let copied;
    let (buffer, layout) = match data.host() {
        Some(b) => (b, data.layout().clone()),
        None => {
            copied = data.to_host()?;
            (&copied, crate::layout::Layout::contiguous(&data.layout().shape))
        }
    };
    let l = &layout;
    let mut offsets = vec![l.offset as isize];
    for (d, ks) in kept.iter().enumerate() {
        offsets = offsets.iter().flat_map(|&o| ks.iter().map(move |&k| o + k as isize * l.strides[d])).collect();
    }
    fn pick<T: Element, U>(v: &[T], offs: &[isize], f: impl Fn(T) -> U) -> Vec<U> {
        offs.iter().map(|&o| f(v[o as usize])).collect()
    }
    Ok(crate::with_buffer!(buffer, v => {
        if dtype == DType::Bool {
            Vals::Bool(pick(v, &offsets, |x| x.to_i64() != 0))
        } else if dtype.is_float() {
            Vals::Float(pick(v, &offsets, |x| x.to_f64()))
        } else {
            Vals::Int(pick(v, &offsets, |x| x.to_i64()))
        }
    }))
}

/// Renders an evaluated array.
fn render(data: &Data, shape: &[usize], dtype: DType) -> crate::Result<String> {
    let size: usize = shape.iter().product();
    let mut extras = vec![];
    let lst = if size == 0 {
        if shape != [0] {
            extras.push(format!("shape={}", tuple_str(shape)));
        }
        "[]".to_string()
    } else {
        let summarize = size > THRESHOLD;
        if summarize {
            extras.push(format!("shape={}", tuple_str(shape)));
        }
        let elided: Vec<bool> = shape.iter().map(|&n| summarize && n > 2 * EDGE_ITEMS).collect();
        let kept: Vec<Vec<usize>> = shape
            .iter()
            .zip(&elided)
            .map(|(&n, &e)| if e { (0..EDGE_ITEMS).chain(n - EDGE_ITEMS..n).collect() } else { (0..n).collect() })
            .collect();
        let kshape: Vec<usize> = kept.iter().map(|k| k.len()).collect();
        let words = format_elements(read_kept(data, &kept, dtype)?, dtype, shape.is_empty());
        let hanging = " ".repeat(PREFIX.len() + 1);
        // NumPy leaves room for the closing ")" on the last line.
        format_nested(&words, &kshape, &elided, &hanging, LINE_WIDTH - 1)
    };
    extras.push(format!("dtype={}", dtype.numpy_name()));
    let arr = format!("{PREFIX}{lst},");
    let extra = format!("{})", extras.join(", "));
    let last_line = arr.len() - arr.rfind('\n').map_or(0, |i| i + 1);
    let spacer =
        if last_line + extra.len() + 1 > LINE_WIDTH { format!("\n{}", " ".repeat(PREFIX.len())) } else { " ".into() };
    Ok(format!("{arr}{spacer}{extra}"))
}

/// NumPy's `_formatArray`: nests the formatted elements in brackets, one row
/// per line for the last axis, wrapping rows longer than `width`.
fn format_nested(words: &[String], shape: &[usize], elided: &[bool], hanging: &str, width: usize) -> String {
    if shape.is_empty() {
        return words[0].clone();
    }
    let n = shape[0];
    let block: usize = shape[1..].iter().product();
    let next_hanging = format!("{hanging} ");
    let item = |i: usize| {
        format_nested(&words[i * block..(i + 1) * block], &shape[1..], &elided[1..], &next_hanging, width - 1)
    };
    let (leading, trailing_from) = if elided[0] { (EDGE_ITEMS, n - EDGE_ITEMS) } else { (0, 0) };
    let mut s = String::new();
    if shape.len() == 1 {
        let elem_width = width - 1;
        let mut line = hanging.to_string();
        for i in 0..leading {
            extend_line(&mut s, &mut line, &item(i), elem_width, hanging);
            line.push_str(", ");
        }
        if elided[0] {
            extend_line(&mut s, &mut line, "...", elem_width, hanging);
            line.push_str(", ");
        }
        for i in trailing_from..n - 1 {
            extend_line(&mut s, &mut line, &item(i), elem_width, hanging);
            line.push_str(", ");
        }
        extend_line(&mut s, &mut line, &item(n - 1), elem_width, hanging);
        s.push_str(&line);
    } else {
        let line_sep = format!(",{}", "\n".repeat(shape.len() - 1));
        for i in 0..leading {
            s += &format!("{hanging}{}{line_sep}", item(i));
        }
        if elided[0] {
            s += &format!("{hanging}...{line_sep}");
        }
        for i in trailing_from..n - 1 {
            s += &format!("{hanging}{}{line_sep}", item(i));
        }
        s += &format!("{hanging}{}", item(n - 1));
    }
    format!("[{}]", &s[hanging.len()..])
}

/// Appends `word` to `line`, first moving `line` to `s` if the word would
/// pass `width` (unless the line holds nothing but the indent).
fn extend_line(s: &mut String, line: &mut String, word: &str, width: usize, prefix: &str) {
    if line.len() + word.len() > width && line.len() > prefix.len() {
        s.push_str(line.trim_end());
        s.push('\n');
        *line = prefix.to_string();
    }
    line.push_str(word);
}

/// Formats every shown element with one width (NumPy's Bool/Integer/
/// FloatingFormat), so columns line up.
fn format_elements(vals: Vals, dtype: DType, zero_d: bool) -> Vec<String> {
    match vals {
        Vals::Bool(v) => {
            let pad = if zero_d { "" } else { " " };
            v.iter().map(|&b| if b { format!("{pad}True") } else { "False".into() }).collect()
        }
        Vals::Int(v) => {
            let w = v.iter().map(|x| x.to_string().len()).max().unwrap_or(0);
            v.iter().map(|x| format!("{x:>w$}")).collect()
        }
        Vals::Float(v) => FloatFormat::new(&v, dtype).format_all(&v),
    }
}

/// `x` rounded to `dtype` (comparisons follow NumPy, which makes them in the
/// array's dtype).
fn in_dtype(x: f64, dtype: DType) -> f64 {
    crate::with_dtype!(dtype, T => <T as Element>::from_f64(x).to_f64())
}

/// The shortest significant digits that identify `a` (finite, >= 0) in its
/// dtype, and the decimal exponent of the first digit: `a = d.ddd * 10^e`.
fn shortest(a: f64, dtype: DType) -> (String, i32) {
    if a == 0.0 {
        return ("0".into(), 0);
    }
    let s = match dtype {
        DType::F32 => format!("{:e}", a as f32),
        DType::F64 => format!("{a:e}"),
        _ => (0..=17)
            .map(|p| format!("{a:.p$e}"))
            .find(|s| s.parse::<f64>().is_ok_and(|b| in_dtype(b, dtype) == a))
            .unwrap_or_else(|| format!("{a:e}")),
    };
    let (mant, exp) = s.split_once('e').expect("LowerExp output has an exponent");
    let mut digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    (digits, exp.parse().expect("LowerExp exponent is an integer"))
}

/// One float split for printing: sign and integer part, fraction digits and,
/// in scientific notation, the exponent.
struct Parts {
    int: String,
    frac: String,
    exp: i32,
}

fn trim_zeros(s: &str) -> String {
    s.trim_end_matches('0').to_string()
}

/// Positional digits: shortest, at most `PRECISION` fractional digits.
fn positional(x: f64, dtype: DType) -> Parts {
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let a = x.abs();
    let (d, e) = shortest(a, dtype);
    let nfrac = d.len() as i32 - 1 - e;
    let (int, frac) = if nfrac > PRECISION as i32 {
        let s = format!("{a:.PRECISION$}");
        let (i, f) = s.split_once('.').expect("fixed-point output has a point");
        (i.to_string(), trim_zeros(f))
    } else if e >= 0 {
        let e = e as usize;
        if d.len() > e + 1 {
            (d[..e + 1].to_string(), d[e + 1..].to_string())
        } else {
            (format!("{d}{}", "0".repeat(e + 1 - d.len())), String::new())
        }
    } else {
        ("0".to_string(), format!("{}{d}", "0".repeat((-e - 1) as usize)))
    };
    Parts { int: format!("{sign}{int}"), frac, exp: 0 }
}

/// Scientific digits: shortest, at most `PRECISION` fractional digits.
fn scientific(x: f64, dtype: DType) -> Parts {
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let a = x.abs();
    let (d, e) = shortest(a, dtype);
    let (int, frac, exp) = if d.len() - 1 > PRECISION {
        let s = format!("{a:.PRECISION$e}");
        let (m, ex) = s.split_once('e').expect("LowerExp output has an exponent");
        let (i, f) = m.split_once('.').expect("mantissa has a point");
        (i.to_string(), trim_zeros(f), ex.parse().expect("LowerExp exponent is an integer"))
    } else {
        (d[..1].to_string(), d[1..].to_string(), e)
    };
    Parts { int: format!("{sign}{int}"), frac, exp }
}

/// NumPy's `FloatingFormat` in its default "maxprec" mode.
struct FloatFormat {
    dtype: DType,
    exp_format: bool,
    pad_left: usize,
    pad_right: usize,
    /// Fraction digits in scientific notation (all elements get as many).
    precision: usize,
    /// Minimum exponent digits.
    exp_size: usize,
}

impl FloatFormat {
    fn new(v: &[f64], dtype: DType) -> FloatFormat {
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let nonzero: Vec<f64> = finite.iter().filter(|&&x| x != 0.0).map(|x| x.abs()).collect();
        let mut exp_format = false;
        if !nonzero.is_empty() {
            let max = nonzero.iter().copied().fold(f64::MIN, f64::max);
            let min = nonzero.iter().copied().fold(f64::MAX, f64::min);
            exp_format =
                max >= in_dtype(1e8, dtype) || min < in_dtype(1e-4, dtype) || in_dtype(max / min, dtype) > 1000.0;
        }
        let mut f = FloatFormat { dtype, exp_format, pad_left: 0, pad_right: 0, precision: 0, exp_size: 2 };
        if !finite.is_empty() {
            if exp_format {
                let parts: Vec<Parts> = finite.iter().map(|&x| scientific(x, dtype)).collect();
                f.precision = parts.iter().map(|p| p.frac.len()).max().unwrap_or(0);
                f.exp_size = parts.iter().map(|p| p.exp.unsigned_abs().to_string().len()).max().unwrap_or(2).max(2);
                f.pad_left = parts.iter().map(|p| p.int.len()).max().unwrap_or(0);
                f.pad_right = f.exp_size + 2 + f.precision;
            } else {
                let parts: Vec<Parts> = finite.iter().map(|&x| positional(x, dtype)).collect();
                f.pad_left = parts.iter().map(|p| p.int.len()).max().unwrap_or(0);
                f.pad_right = parts.iter().map(|p| p.frac.len()).max().unwrap_or(0);
            }
        }
        if finite.len() != v.len() {
            let neginf = v.contains(&f64::NEG_INFINITY) as usize;
            let offset = f.pad_right + 1;
            f.pad_left = f.pad_left.max(3usize.saturating_sub(offset)).max((3 + neginf).saturating_sub(offset));
        }
        f
    }

    fn format(&self, x: f64) -> String {
        if !x.is_finite() {
            let s = if x.is_nan() {
                "nan"
            } else if x < 0.0 {
                "-inf"
            } else {
                "inf"
            };
            let w = self.pad_left + self.pad_right + 1;
            return format!("{s:>w$}");
        }
        let (pl, pr) = (self.pad_left, self.pad_right);
        if self.exp_format {
            let p = scientific(x, self.dtype);
            let (sign, es) = if p.exp < 0 { ('-', self.exp_size) } else { ('+', self.exp_size) };
            format!("{:>pl$}.{:0<prec$}e{sign}{:0>es$}", p.int, p.frac, p.exp.unsigned_abs(), prec = self.precision)
        } else {
            let p = positional(x, self.dtype);
            format!("{:>pl$}.{:<pr$}", p.int, p.frac)
        }
    }

    fn format_all(&self, v: &[f64]) -> Vec<String> {
        v.iter().map(|&x| self.format(x)).collect()
    }
}
