//! `rsalloc.Struct` / `rsalloc.Union` views and their fields, and
//! `rsalloc.Array[T, n]` (DESIGN §2a).
//!
//! A struct class is a Python subclass of [`StructView`] (python/rsalloc/_struct.py
//! declares it and works the layout out with ctypes, so it is the platform's
//! by construction). When the class is first used as an element type,
//! [`classify_composite`] installs one [`Field`] descriptor per field on it:
//! an offset and the field's TypeInfo. A view (`p.ref`, `p[i]`, an embedded
//! struct) is an object of that class holding a Pointer to the struct's
//! bytes: every field access checks that Pointer's block first, and the view
//! does not pin it.

use super::checked;
use super::cpython::attribute_routes;
use super::cpython::freelist::{as_pointer, new_object};
use super::cpython::view_objects::{make_view, plain_view_objects};
use super::errors::IntoPy;
use super::pointer::{from_stored_address, Pointer};
use super::struct_view::StructView;
use super::types::{self, leak, Composite, TypeInfo};
use super::values::{plain_number, to_value};
use crate::core::types::{Kind, Value};
use crate::py::checked::{Int, Text};
use crate::py::serialized::token;
use pyo3::exceptions::{PyAttributeError, PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PySlice, PyType};
use std::ffi::CString;

/// Plugs struct, union and array classes into type lookup (`types`) and
/// element access (`pointer`), which sit below this module. Called once at
/// module init, before any struct class is used.
pub fn install() {
    types::install_composites(types::CompositeClasses {
        classify: classify_composite,
        is_struct_class,
    });
    super::pointer::install_composites(super::pointer::Composites {
        at: composite_at,
        write: write_composite,
    });
}

/// One field of a struct class: its offset and type.
#[pyclass(frozen, module = "rsalloc", name = "Field")]
pub struct Field {
    offset: usize,
    ty: &'static TypeInfo,
    name: String,
    /// The field type as declared (`Array[T, n]`, `Pointer[T]`, a class).
    declared: Py<PyAny>,
    /// The type object of the class declaring the field: its views are
    /// views without a subclass check.
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    pub(crate) owner_type: usize,
}

impl Field {
    fn view<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a StructView> {
        match obj.cast::<StructView>() {
            Ok(v) => Ok(v.get()),
            Err(_) => Err(checked::error::<PyTypeError>(
                "a struct field of another object",
            )),
        }
    }

    /// The value of a number field of a live view, as a new reference
    /// (null with the exception set if CPython is out of memory); None for
    /// anything else, which `read` then serves or raises. For the fast
    /// entry point (cpython/fast_structs.rs): no Python code runs here.
    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    #[inline(always)]
    pub(crate) fn plain_read(&self, view: &StructView) -> Option<*mut ffi::PyObject> {
        let kind = self.ty.kind;
        if !kind.is_number() {
            return None;
        }
        let p = &view.ptr;
        let _held = p.access(None).ok()?;
        p.check(None).ok()?;
        // SAFETY: live, and the field lies inside the struct; the
        // conversions take plain numbers.
        Some(unsafe {
            match kind.read(p.addr + self.offset) {
                Value::Int(v) => ffi::PyLong_FromLongLong(v),
                Value::UInt(v) => ffi::PyLong_FromUnsignedLongLong(v),
                Value::Float(v) => ffi::PyFloat_FromDouble(v),
                Value::Bool(b) => ffi::Py_NewRef(if b { ffi::Py_True() } else { ffi::Py_False() }),
                Value::Addr(_) => return None,
            }
        })
    }

    #[cfg_attr(
        not(all(pyo3_disable_reference_pool, pyo3_leak_on_drop_without_reference_pool)),
        allow(dead_code)
    )]
    /// Stores an exact int or float into a number field, or a live Pointer
    /// or None into a pointer field, of a live view; false for anything
    /// else, which `write` then serves or raises. No Python code runs here.
    #[inline(always)]
    pub(crate) fn plain_write(&self, view: &StructView, v: &Bound<'_, PyAny>) -> bool {
        let kind = self.ty.kind;
        let value = if kind == Kind::Ptr {
            if v.is_none() {
                Value::Addr(0)
            } else {
                match as_pointer(&v.as_borrowed()) {
                    Some(q) if q.get().check_alive(token(v.py())).is_ok() => {
                        Value::Addr(q.get().addr)
                    }
                    _ => return false,
                }
            }
        } else {
            match plain_number(kind, v) {
                Some(value) => value,
                None => return false,
            }
        };
        let p = &view.ptr;
        let Ok(_held) = p.access(token(v.py())) else {
            return false;
        };
        if p.check(token(v.py())).is_err() {
            return false;
        }
        // SAFETY: live, and the field lies inside the struct.
        unsafe { kind.write(p.addr + self.offset, value) };
        true
    }

    fn read(&self, py: Python<'_>, view: &StructView) -> PyResult<Py<PyAny>> {
        let p = &view.ptr;
        let _held = p.access(token(py)).py(py, p)?;
        p.check(token(py)).py(py, p)?;
        let addr = p.addr + self.offset;
        let kind = self.ty.kind;
        if kind.is_number() {
            // SAFETY: the view's block is live and holds the struct, whose
            // layout puts this field inside it.
            return checked::value(py, unsafe { kind.read(addr) });
        }
        if kind == Kind::Ptr {
            // SAFETY: as above; the slot is pointer-sized.
            let stored =
                unsafe { std::ptr::with_exposed_provenance::<usize>(addr).read_unaligned() };
            let target = self.ty.target.expect("pointer slots have a target");
            let q = from_stored_address(py, stored, target, &p.owner)?;
            return Ok(new_object(py, q)?.into_any().unbind());
        }
        let field = p.view(addr, self.ty, Some(self.ty.size), token(py));
        field.item(py, 0)
    }

    fn write(&self, py: Python<'_>, view: &StructView, v: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = &view.ptr;
        p.check(token(py)).py(py, p)?; // a dead view says so before any conversion
        let kind = self.ty.kind;
        let addr = p.addr + self.offset;
        if kind.is_number() || kind == Kind::Ptr {
            let value = to_value(kind, self.ty, v)?;
            // The conversion may have run Python code that freed the block.
            let _held = p.access(token(py)).py(py, p)?;
            p.check(token(py)).py(py, p)?;
            // SAFETY: live, and the field lies inside the struct.
            unsafe { kind.write(addr, value) };
            return Ok(());
        }
        p.view(addr, self.ty, Some(self.ty.size), token(py))
            .write(py, 0, v)
    }
}

#[pymethods]
impl Field {
    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match obj {
            None => Ok(slf.clone().into_any().unbind()),
            Some(obj) => slf.get().read(slf.py(), Self::view(obj)?),
        }
    }

    fn __set__(&self, obj: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.write(obj.py(), Self::view(obj)?, value)
    }

    fn __delete__(&self, _obj: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(checked::error::<PyAttributeError>(format!(
            "the struct field {} cannot be deleted",
            self.name
        )))
    }

    /// The field's byte offset in its struct.
    #[getter]
    fn offset(&self) -> Int {
        Int::from(self.offset)
    }

    /// The field's size in bytes.
    #[getter]
    fn size(&self) -> Int {
        Int::from(self.ty.size)
    }

    /// The field's type, as declared.
    #[getter]
    fn r#type(&self, py: Python<'_>) -> Py<PyAny> {
        self.declared.clone_ref(py)
    }

    #[getter]
    fn name(&self) -> Text<&str> {
        Text(&self.name)
    }

    fn __repr__(&self) -> Text<String> {
        Text(format!(
            "<Field {}: {} at offset {}, size {}>",
            self.name, self.ty.name, self.offset, self.ty.size
        ))
    }
}

static STRUCT_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn struct_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    STRUCT_MODULE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import(checked::name!("rsalloc._struct"))?.unbind())
        })
        .map(|m| m.bind(py))
}

/// `t` is a class deriving from StructView (`Struct`, `Union` or one of theirs).
pub(crate) fn is_struct_class(t: &Bound<'_, PyAny>) -> PyResult<bool> {
    match t.cast::<PyType>() {
        Ok(c) => c.is_subclass(&StructView::type_object(t.py())),
        Err(_) => Ok(false),
    }
}

fn c_format(format: String) -> &'static std::ffi::CStr {
    Box::leak(CString::new(format).unwrap_or_default().into_boxed_c_str())
}

/// What `_struct._layout` returns: (size, alignment, buffer format, struct
/// base or None, [(field name, declared type, offset, is a pointer slot)]).
type StructLayout<'py> = (
    usize,
    usize,
    String,
    Option<Bound<'py, PyAny>>,
    Vec<(String, Bound<'py, PyAny>, usize, bool)>,
);

/// The TypeInfo of a Struct/Union class (fields installed) or of an
/// `Array[T, n]` class; None for any other class.
pub(crate) fn classify_composite(class: &Bound<'_, PyType>) -> PyResult<Option<&'static TypeInfo>> {
    let py = class.py();
    let module = struct_module(py)?;
    let name: String = class.getattr(checked::name!("__name__"))?.extract()?;
    if class.is_subclass(&StructView::type_object(py))? {
        let (size, align, format, base, fields): StructLayout<'_> = module
            .call_method1(checked::name!("_layout"), (class,))?
            .extract()?;
        if let Some(base) = base {
            types::lookup(&base)?; // its fields are the first of this one
        }
        // Fields held by value cannot name this class (the layout refused
        // that); pointer fields may, and look it up once it is known.
        let mut infos = Vec::with_capacity(fields.len());
        for (_, t, _, is_pointer) in &fields {
            infos.push(if *is_pointer {
                None
            } else {
                Some(types::lookup(t)?)
            });
        }
        let info = leak(TypeInfo {
            kind: Kind::Opaque,
            size,
            align: align.max(1),
            format: c_format(format),
            class: class.clone().into_any().unbind(),
            target: None,
            name,
            ctypes: false,
            composite: Composite::Struct,
            param: PyOnceLock::new(),
        });
        plain_view_objects(class);
        attribute_routes(class);
        let info = types::remember(class.as_any(), info)?;
        for ((fname, t, offset, _), known) in fields.into_iter().zip(infos) {
            let ty = match known {
                Some(ty) => ty,
                None => types::lookup(&t)?,
            };
            let field = Field {
                offset,
                ty,
                name: fname.clone(),
                declared: t.unbind(),
                owner_type: class.as_type_ptr().addr(),
            };
            class.setattr(fname.as_str(), Py::new(py, field)?)?;
        }
        return Ok(Some(info));
    }
    if class.is_subclass(&module.getattr(checked::name!("Array"))?)? {
        let (elem, len, format): (Bound<'_, PyAny>, usize, String) = module
            .call_method1(checked::name!("_array_layout"), (class,))?
            .extract()?;
        let elem = types::lookup(&elem)?;
        let size = len
            .checked_mul(elem.size)
            .filter(|n| *n <= isize::MAX as usize)
            .ok_or_else(|| checked::error::<PyOverflowError>(format!("{name} is too large")))?;
        return Ok(Some(leak(TypeInfo {
            kind: Kind::Opaque,
            size,
            align: elem.align,
            format: c_format(format),
            class: class.clone().into_any().unbind(),
            target: None,
            name,
            ctypes: false,
            composite: Composite::Array { elem, len },
            param: PyOnceLock::new(),
        })));
    }
    Ok(None)
}

/// The element of composite type `ty` at `addr` inside `parent`'s block:
/// a struct view or a counted Pointer view; None for other types.
pub(crate) fn composite_at(
    py: Python<'_>,
    parent: &Pointer,
    addr: usize,
    ty: &'static TypeInfo,
) -> Option<PyResult<Py<PyAny>>> {
    match ty.composite {
        Composite::No => None,
        Composite::Struct => Some(make_view(
            py,
            &ty.class,
            parent.view(addr, ty, Some(ty.size), token(py)),
        )),
        Composite::Array { elem, .. } => Some(
            new_object(py, parent.view(addr, elem, Some(ty.size), token(py)))
                .map(|b| b.into_any().unbind()),
        ),
    }
}

/// `dst[i] = v` for a composite element type: a view of the same struct
/// class is copied in; an array takes what slice assignment of its
/// elements takes (exactly n values). None for other types.
pub(crate) fn write_composite(
    py: Python<'_>,
    dst: &Pointer,
    i: isize,
    v: &Bound<'_, PyAny>,
) -> Option<PyResult<()>> {
    let ty = dst.ty;
    match ty.composite {
        Composite::No => None,
        Composite::Struct => Some(copy_struct(py, dst, i, v)),
        Composite::Array { elem, .. } => Some((|| {
            let _held = dst.access(token(py)).py(py, dst)?;
            let addr = dst.elem_addr(i).py(py, dst)?;
            let slots = Py::new(py, dst.view(addr, elem, Some(ty.size), token(py)))?;
            slots.bind(py).set_item(PySlice::full(py), v)
        })()),
    }
}

fn copy_struct(py: Python<'_>, dst: &Pointer, i: isize, v: &Bound<'_, PyAny>) -> PyResult<()> {
    let ty = dst.ty;
    let src = match v.cast::<StructView>() {
        Ok(s) if s.get().ptr.ty.class.is(&ty.class) => s.get(),
        _ => {
            return Err(checked::error::<PyTypeError>(format!(
                "expected a {} view, got {}",
                ty.name,
                v.get_type().name()?
            )))
        }
    };
    let _src_held = src.ptr.access(token(py)).py(py, &src.ptr)?;
    src.ptr.check(token(py)).py(py, &src.ptr)?;
    let _held = dst.access(token(py)).py(py, dst)?;
    let addr = dst.elem_addr(i).py(py, dst)?;
    // SAFETY: both blocks are live and hold ty.size bytes at these
    // addresses; `copy` allows them to overlap.
    unsafe {
        std::ptr::copy(
            std::ptr::with_exposed_provenance::<u8>(src.ptr.addr),
            std::ptr::with_exposed_provenance_mut::<u8>(addr),
            ty.size,
        )
    };
    Ok(())
}
