//! [`Array`]: an immutable, cheap-to-clone handle to a node of the lazy
//! graph. Building an op records a node (shape and dtype inferred and checked
//! at once); nothing runs until [`Array::eval`], [`eval`] or a read such as
//! [`Array::to_vec`]. An evaluated node keeps its buffer and lets go of its
//! inputs, so finished work is not held alive by later arrays.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::cpu::{self, Buffer};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::primitive::Primitive;
use crate::shape::check_size;

/// An evaluated array: a shared buffer and the layout of the array in it.
#[derive(Clone, Debug)]
pub struct Data {
    /// The buffer (shared between views).
    pub buffer: Arc<Buffer>,
    /// Where the array's elements sit in the buffer.
    pub layout: Layout,
}

impl Data {
    /// A contiguous array owning a fresh buffer.
    pub fn contiguous(buffer: Buffer, shape: &[usize]) -> Data {
        Data { buffer: Arc::new(buffer), layout: Layout::contiguous(shape) }
    }

    /// The elements in row-major order, as a new vector of the buffer's
    /// type `T` (an error if `T` is another type, or when the memory for
    /// the vector cannot be allocated).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let src = self.buffer.as_slice::<T>().ok_or_else(|| Error::DType {
            op: "to_vec",
            dtype: self.buffer.dtype(),
            msg: format!("{} elements were requested; convert with .astype(DType::{:?}) first", T::DTYPE, T::DTYPE),
        })?;
        cpu::strided::gather("to_vec", src, &self.layout)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A node of the lazy graph.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) prim: Primitive,
    pub(crate) shape: Dims,
    pub(crate) dtype: DType,
    /// Inputs while pending; emptied once the node is evaluated.
    pub(crate) inputs: Mutex<Vec<Array>>,
    pub(crate) data: OnceLock<Data>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Drop long input chains iteratively so deep graphs cannot overflow the stack.
        let mut stack = std::mem::take(self.inputs.get_mut().unwrap_or_else(|e| e.into_inner()));
        while let Some(a) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(a.0) {
                stack.append(node.inputs.get_mut().unwrap_or_else(|e| e.into_inner()));
            }
        }
    }
}

/// A lazy n-dimensional array. Cloning is cheap (a reference count).
#[derive(Clone)]
pub struct Array(pub(crate) Arc<Node>);

impl Array {
    fn new_node(prim: Primitive, inputs: Vec<Array>, shape: Dims, dtype: DType, data: Option<Data>) -> Array {
        let cell = OnceLock::new();
        if let Some(d) = data {
            let _ = cell.set(d);
        }
        Array(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            prim,
            shape,
            dtype,
            inputs: Mutex::new(inputs),
            data: cell,
        }))
    }

    /// Records an operation on `inputs`: infers and checks the output shape
    /// and dtype now, computes nothing.
    pub fn from_op(prim: Primitive, inputs: Vec<Array>) -> Result<Array> {
        let sigs: Vec<(&[usize], DType)> = inputs.iter().map(|a| (a.shape(), a.dtype())).collect();
        let (shape, dtype) = prim.infer(&sigs)?;
        Ok(Array::new_node(prim, inputs, shape.into(), dtype, None))
    }

    /// An array that already holds data. The layout is checked against
    /// the buffer: its shape must pass [`check_size`] and every element it
    /// addresses must lie inside the buffer ([`Layout::fits`]), so no
    /// kernel can read past it; otherwise an error says why.
    pub fn from_data(data: Data) -> Result<Array> {
        check_size("from_data", &data.layout.shape, data.buffer.dtype())?;
        if !data.layout.fits(data.buffer.len()) {
            return Err(Error::Invalid {
                op: "from_data",
                msg: format!(
                    "the layout (shape {}, strides {:?}, offset {}) reaches outside its buffer of {} element(s)",
                    crate::error::shape_str(&data.layout.shape),
                    &data.layout.strides[..],
                    data.layout.offset,
                    data.buffer.len()
                ),
            });
        }
        Ok(Array::from_valid_data(data))
    }

    /// [`Array::from_data`] for data whose layout is known to fit its
    /// buffer (checked in debug builds only).
    pub(crate) fn from_valid_data(data: Data) -> Array {
        debug_assert!(data.layout.fits(data.buffer.len()), "a layout reaches outside its buffer");
        let shape = data.layout.shape.clone();
        let dtype = data.buffer.dtype();
        Array::new_node(Primitive::Constant, vec![], shape, dtype, Some(data))
    }

    /// A placeholder for argument `index` of a traced function: shape and
    /// dtype, no data.
    pub(crate) fn placeholder(index: usize, shape: Vec<usize>, dtype: DType) -> Array {
        Array::new_node(Primitive::Placeholder { index }, vec![], shape.into(), dtype, None)
    }

    /// Builds an array from a slice of elements in row-major order.
    ///
    /// ```
    /// let a = kiln::Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// assert_eq!(a.shape(), &[2, 2]);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Array> {
        Array::from_vec(data.to_vec(), shape)
    }

    /// Builds an array from a vector in row-major order (no copy).
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Array> {
        let n = check_size("from_slice", shape, T::DTYPE)?;
        if n != data.len() {
            return Err(Error::DataLength { expected: n, got: data.len(), shape: shape.to_vec() });
        }
        Ok(Array::from_valid_data(Data::contiguous(Buffer::from_vec(data), shape)))
    }

    /// A 0-d array holding one value.
    pub fn scalar<T: Element>(v: T) -> Array {
        Array::from_valid_data(Data::contiguous(Buffer::from_vec(vec![v]), &[]))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.0.shape.len()
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        crate::shape::numel(&self.0.shape)
    }

    /// The primitive that computes this array.
    pub fn primitive(&self) -> &Primitive {
        &self.0.prim
    }

    /// A process-unique id of the graph node.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// True once the array holds data.
    pub fn is_evaluated(&self) -> bool {
        self.0.data.get().is_some()
    }

    /// The inputs of a pending node (empty once evaluated).
    pub(crate) fn inputs(&self) -> Vec<Array> {
        self.0.inputs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The evaluated data, if any.
    pub fn data(&self) -> Option<&Data> {
        self.0.data.get()
    }

    /// Computes this array (and what it depends on) if not done yet.
    pub fn eval(&self) -> Result<()> {
        eval(&[self])
    }

    /// Evaluates and returns the data.
    pub(crate) fn evaluated(&self, what: &'static str) -> Result<&Data> {
        if self.0.data.get().is_none() {
            eval_for(what, &[self])?;
        }
        Ok(self.0.data.get().expect("evaluated node has data"))
    }

    /// The elements in row-major order. `T` must be the array's dtype
    /// (convert with [`Array::astype`] first otherwise).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DType {
                op: "to_vec",
                dtype: self.dtype(),
                msg: format!("{} elements were requested; convert with .astype(DType::{:?}) first", T::DTYPE, T::DTYPE),
            });
        }
        self.evaluated("to_vec")?.to_vec::<T>()
    }

    /// The single element of a size-1 array.
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.size() != 1 {
            return Err(Error::Shape {
                op: "item",
                msg: format!(
                    "only arrays with one element can be converted to a scalar, got shape {}",
                    crate::error::shape_str(self.shape())
                ),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }
}

/// Evaluates several arrays at once, sharing the work they have in common.
pub fn eval(arrays: &[&Array]) -> Result<()> {
    eval_for("eval", arrays)
}

fn eval_for(what: &'static str, arrays: &[&Array]) -> Result<()> {
    // The common case after a compiled call: nothing to do, and no graph
    // walk (its hash set alone costs as much as a small kernel).
    if arrays.iter().all(|a| a.is_evaluated()) {
        return Ok(());
    }
    let order = topo_sort(arrays, false);
    let mut inputs: Vec<usize> = order
        .iter()
        .filter_map(|a| match a.primitive() {
            Primitive::Placeholder { index } => Some(*index),
            _ => None,
        })
        .collect();
    if !inputs.is_empty() {
        inputs.sort_unstable();
        let t = crate::compile::trace_input_names();
        return Err(Error::TracingValue {
            what,
            inputs: inputs.iter().map(|&i| t.get(i).cloned().unwrap_or_else(|| format!("argument {i}"))).collect(),
        });
    }
    // Count consumers inside this evaluation so intermediates are released
    // as soon as their last consumer has run.
    let pos: std::collections::HashMap<u64, usize> = order.iter().enumerate().map(|(i, a)| (a.id(), i)).collect();
    let mut uses = vec![0usize; order.len()];
    let mut node_inputs: Vec<Vec<Array>> = Vec::with_capacity(order.len());
    for a in &order {
        let ins = a.inputs();
        for i in &ins {
            if let Some(&p) = pos.get(&i.id()) {
                uses[p] += 1;
            }
        }
        node_inputs.push(ins);
    }
    for a in arrays {
        if let Some(&p) = pos.get(&a.id()) {
            uses[p] += 1;
        }
    }
    let mut slots: Vec<Option<Array>> = order.into_iter().map(Some).collect();
    for i in 0..slots.len() {
        let a = slots[i].clone().expect("slot is live until its last use");
        let ins = std::mem::take(&mut node_inputs[i]);
        if a.0.data.get().is_none() {
            let datas: Vec<&Data> =
                ins.iter().map(|x| x.0.data.get().expect("inputs are evaluated before their consumers")).collect();
            let out = cpu::eval(a.primitive(), &datas, a.shape(), a.dtype())?;
            let _ = a.0.data.set(out);
            a.0.inputs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        for x in &ins {
            if let Some(&p) = pos.get(&x.id()) {
                uses[p] -= 1;
                if uses[p] == 0 {
                    slots[p] = None;
                }
            }
        }
    }
    Ok(())
}

/// Nodes reachable from `roots`, inputs before consumers. Evaluated nodes
/// are leaves: listed when `with_evaluated`, skipped otherwise.
pub(crate) fn topo_sort(roots: &[&Array], with_evaluated: bool) -> Vec<Array> {
    let mut order = vec![];
    let mut done = std::collections::HashSet::new();
    let mut stack: Vec<(Array, bool)> = roots.iter().rev().map(|a| ((*a).clone(), false)).collect();
    while let Some((a, expanded)) = stack.pop() {
        if expanded {
            if done.insert(a.id()) {
                order.push(a);
            }
            continue;
        }
        if done.contains(&a.id()) || (!with_evaluated && a.is_evaluated()) {
            continue;
        }
        let ins = if a.is_evaluated() { vec![] } else { a.inputs() };
        stack.push((a, true));
        for i in ins.into_iter().rev() {
            if !done.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({}{:?}, {})", self.dtype(), self.shape(), self.primitive().name())
    }
}
