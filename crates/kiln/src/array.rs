//! [`Array`]: an immutable, cheap-to-clone handle to a node of the lazy
//! graph. Building an op records a node (shape and dtype inferred and checked
//! at once); nothing runs until [`Array::eval`], [`eval`] or a read such as
//! [`Array::to_vec`]. An evaluated node keeps its buffer and lets go of its
//! inputs, so finished work is not held alive by later arrays.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::buffer::Buffer;
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::primitive::Primitive;
use crate::shape::check_size;
use crate::storage::Storage;

/// An evaluated array: shared storage and the layout of the array in it.
///
/// A layout never reaches outside its storage: [`Data::new`] checks it, and
/// the crate's own constructors keep it so (checked in debug builds), so
/// kernels may index through a layout without bounds checks per element.
#[derive(Clone, Debug)]
pub struct Data {
    storage: Arc<dyn Storage>,
    layout: Layout,
}

impl Data {
    /// Data viewing `storage` through `layout`. The layout is checked: its
    /// shape must pass [`check_size`] and every element it addresses must
    /// lie inside the storage ([`Layout::fits`]); otherwise an error says
    /// why.
    pub fn new(storage: Arc<dyn Storage>, layout: Layout) -> Result<Data> {
        check_size("from_data", &layout.shape, storage.dtype())?;
        if !layout.fits(storage.len()) {
            return Err(Error::Invalid {
                op: "from_data",
                msg: format!(
                    "the layout (shape {}, strides {:?}, offset {}) reaches outside its storage of {} element(s)",
                    crate::error::shape_str(&layout.shape),
                    &layout.strides[..],
                    layout.offset,
                    storage.len()
                ),
            });
        }
        Ok(Data { storage, layout })
    }

    /// [`Data::new`] for a layout known to fit (checked in debug builds).
    pub(crate) fn from_parts(storage: Arc<dyn Storage>, layout: Layout) -> Data {
        debug_assert!(layout.fits(storage.len()), "a layout reaches outside its storage");
        Data { storage, layout }
    }

    /// A contiguous array owning a fresh host buffer of exactly the shape's
    /// number of elements (checked in debug builds).
    pub(crate) fn contiguous(buffer: Buffer, shape: &[usize]) -> Data {
        Data::from_parts(Arc::new(buffer), Layout::contiguous(shape))
    }

    /// Another view of the same storage (the layout must fit it; checked in
    /// debug builds).
    pub(crate) fn view(&self, layout: Layout) -> Data {
        Data::from_parts(Arc::clone(&self.storage), layout)
    }

    /// The same storage through another layout, keeping this handle's
    /// reference (the layout must fit; checked in debug builds).
    pub(crate) fn relayout(self, layout: Layout) -> Data {
        Data::from_parts(self.storage, layout)
    }

    /// Where the array's elements sit in the storage.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The storage (shared between views).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// The device the data is on.
    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// The storage as a host buffer, when it is one (CPU data).
    pub fn host(&self) -> Option<&Buffer> {
        self.storage.as_any().downcast_ref::<Buffer>()
    }

    /// The host buffer of CPU data. The CPU backend's kernels use this: the
    /// device dispatch gives them host data only, so another storage here
    /// is a bug in kiln, reported by a panic naming it.
    pub(crate) fn buffer(&self) -> &Buffer {
        match self.host() {
            Some(b) => b,
            None => panic!("a CPU kernel was given {:?} storage", self.device()),
        }
    }

    /// The host buffer, mutably, when nothing else holds this storage (so
    /// an output may be written over it).
    pub(crate) fn unique_buffer_mut(&mut self) -> Option<&mut Buffer> {
        Arc::get_mut(&mut self.storage)?.as_any_mut().downcast_mut::<Buffer>()
    }

    /// True when no other array or view holds this storage.
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.storage) == 1
    }

    /// The elements in row-major order, as a new vector of the buffer's
    /// type `T` (an error if `T` is another type, or when the memory for
    /// the vector cannot be allocated).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DType {
                op: "to_vec",
                dtype: self.dtype(),
                msg: format!("{} elements were requested; convert with .astype(DType::{:?}) first", T::DTYPE, T::DTYPE),
            });
        }
        Ok(T::into_host(self.to_host()?).expect("to_host keeps the dtype").into_vec())
    }

    /// A contiguous host copy of the elements in row-major order, made by
    /// the backend of the data's device.
    pub fn to_host(&self) -> Result<Buffer> {
        crate::backend::for_device(self.device())?.to_host(self)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A node of the lazy graph.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) prim: Primitive,
    pub(crate) shape: Dims,
    pub(crate) dtype: DType,
    /// Where the data is (or will be) and the op runs.
    pub(crate) device: Device,
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
    fn new_node(
        prim: Primitive,
        inputs: Vec<Array>,
        shape: Dims,
        dtype: DType,
        device: Device,
        data: Option<Data>,
    ) -> Array {
        let cell = OnceLock::new();
        if let Some(d) = data {
            let _ = cell.set(d);
        }
        Array(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            prim,
            shape,
            dtype,
            device,
            inputs: Mutex::new(inputs),
            data: cell,
        }))
    }

    /// Records an operation on `inputs`: infers and checks the output shape
    /// and dtype now, computes nothing.
    pub fn from_op(prim: Primitive, inputs: Vec<Array>) -> Result<Array> {
        let sigs: Vec<(&[usize], DType)> = inputs.iter().map(|a| (a.shape(), a.dtype())).collect();
        let (shape, dtype) = prim.infer(&sigs)?;
        let (device, inputs) = crate::device::common(prim.name(), inputs)?;
        Ok(Array::new_node(prim, inputs, shape.into(), dtype, device, None))
    }

    /// An array that already holds data ([`Data::new`] checked its layout).
    pub fn from_data(data: Data) -> Result<Array> {
        Ok(Array::from_valid_data(data))
    }

    /// [`Array::from_data`] for data whose layout is known to fit its
    /// buffer (checked in debug builds only).
    pub(crate) fn from_valid_data(data: Data) -> Array {
        let shape = data.layout.shape.clone();
        let (dtype, device) = (data.dtype(), data.device());
        Array::new_node(Primitive::Constant, vec![], shape, dtype, device, Some(data))
    }

    /// A constant on `device` holding a contiguous host buffer of `shape`
    /// (its length already checked against the shape).
    pub(crate) fn from_host(buffer: Buffer, shape: &[usize], device: Device) -> Result<Array> {
        Ok(Array::from_valid_data(crate::backend::for_device(device)?.upload(buffer, shape)?))
    }

    /// A placeholder for argument `index` of a traced function: shape and
    /// dtype, no data.
    pub(crate) fn placeholder(index: usize, shape: Vec<usize>, dtype: DType, device: Device) -> Array {
        Array::new_node(Primitive::Placeholder { index }, vec![], shape.into(), dtype, device, None)
    }

    /// Builds an array from a slice of elements in row-major order.
    ///
    /// ```
    /// let a = kiln::Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// assert_eq!(a.shape(), &[2, 2]);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Array> {
        // Copied into storage kiln aligns (`from_vec` keeps the vector's).
        let mut v = crate::memory::try_vec("from_slice", data.len())?;
        v.extend_from_slice(data);
        Array::from_host_vec(v, shape)
    }

    /// Builds an array on the default device ([`crate::device`]) from a
    /// vector in row-major order (no copy on the CPU).
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Array> {
        Array::from_host_vec(data.into(), shape)
    }

    /// [`Array::from_vec`] and [`Array::from_slice`] once their data is host
    /// storage: checks the length against `shape`.
    fn from_host_vec<T: Element>(data: crate::host_vec::HostVec<T>, shape: &[usize]) -> Result<Array> {
        let n = check_size("from_slice", shape, T::DTYPE)?;
        if n != data.len() {
            return Err(Error::DataLength { expected: n, got: data.len(), shape: shape.to_vec() });
        }
        Array::from_host(Buffer::from_vec(data), shape, crate::device::default_device())
    }

    /// A 0-d array holding one value, on the default device (on the CPU if
    /// that device cannot take it).
    pub fn scalar<T: Element>(v: T) -> Array {
        Array::from_host(Buffer::from_vec(vec![v]), &[], crate::device::default_device())
            .unwrap_or_else(|_| Array::from_valid_data(Data::contiguous(Buffer::from_vec(vec![v]), &[])))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The device the array's data is (or will be) on.
    pub fn device(&self) -> Device {
        self.0.device
    }

    /// A copy of the array on `device` (the array itself when it is there
    /// already). The copy is made now: the array is evaluated and its data
    /// moved through host memory, so while tracing a compiled function this
    /// works on captured constants only (a placeholder argument is an
    /// error naming it; pass arguments on the device the function should
    /// run on instead).
    pub fn to_device(&self, device: Device) -> Result<Array> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let target = crate::backend::for_device(device)?;
        let data = self.evaluated("to_device")?;
        let host = data.to_host()?;
        Ok(Array::from_valid_data(target.upload(host, self.shape())?))
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
        let t = crate::trace::trace_input_names();
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
            let out = crate::backend::for_device(a.device())?.eval(a.primitive(), &datas, a.shape(), a.dtype())?;
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
