"""The address of a buffer's memory, for kernels that take pointers (io_uring).

Python has no public way to get at a read-only buffer's address; ctypes'
``from_buffer`` needs a writable one. The C API's ``PyObject_GetBuffer``
works for every contiguous buffer, read-only or not. The address stays valid
only while some export keeps the memory in place: callers use it for
memory a lease holds (the pool's arena, or an adopted buffer whose
memoryview the lease keeps).
"""

from __future__ import annotations

import ctypes


class _PyBuffer(ctypes.Structure):
    # struct Py_buffer (Include/pybuffer.h), stable across CPython 3.x.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0


def buffer_address(obj: object) -> int:
    """The address of the first byte of *obj*, a C-contiguous buffer."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), _PYBUF_SIMPLE) != 0:  # pragma: no cover - raises instead
        raise TypeError("not a contiguous buffer")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))
