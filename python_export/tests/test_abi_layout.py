"""The ctypes copies of the C ABI structs (``_lib.MobileMoeFfnArgs``, ``_lib.MobileMoeLinearArgs``,
``decoder_ops._Buf``) have the layout the Rust library declares (backend/src/capi.rs): size, every
field's offset and name, in order, as reported by ``mobilemoe_abi_layout``."""

import ctypes

import pytest

from conftest import needs_lib
from mobilemoe_export.operators import _lib, decoder_ops


@needs_lib
@pytest.mark.parametrize(
    "which, struct",
    [(1, _lib.MobileMoeFfnArgs), (2, _lib.MobileMoeLinearArgs), (3, decoder_ops._Buf)],
    ids=["MobileMoeFfnArgs", "MobileMoeLinearArgs", "MobileMoeBuf"],
)
def test_ctypes_struct_matches_library_layout(which, struct):
    lib = _lib.get_lib()
    fn = lib.mobilemoe_abi_layout
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64, ctypes.POINTER(ctypes.c_char_p)]
    out = (ctypes.c_uint64 * 64)()
    names = ctypes.c_char_p()
    n = fn(which, out, len(out), ctypes.byref(names))
    assert n > 1, f"the library does not know struct {which}"
    rust_names = names.value.decode().rstrip(",").split(",")
    ours = [name for name, _ in struct._fields_]
    assert ours == rust_names, "field names or order differ from backend/src/capi.rs"
    assert ctypes.sizeof(struct) == out[0], "struct size differs from backend/src/capi.rs"
    assert [getattr(struct, name).offset for name in ours] == list(out[1:n]), "field offsets differ"
