"""Finds and loads ``libmobilemoe_executorch.so`` (the Rust plugin) and declares its C ABI.

The C ABI is docs/DESIGN.md section 8. Loading the library (``RTLD_GLOBAL``, before any ExecuTorch
program is loaded) registers ``MobileMoEBackend`` and the ``mobilemoe::*.out`` kernels with the
``libexecutorch.so`` that the Python runtime shares.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Optional

from .._paths import REPO_ROOT

LIB_NAME = "libmobilemoe_executorch.so"
ENV_VAR = "MOBILEMOE_LIB"

c_f32_p = ctypes.POINTER(ctypes.c_float)
c_u8_p = ctypes.POINTER(ctypes.c_uint8)
c_i8_p = ctypes.POINTER(ctypes.c_int8)
u64 = ctypes.c_uint64
i64 = ctypes.c_int64
i32 = ctypes.c_int32


class MobileMoeFfnArgs(ctypes.Structure):
    _fields_ = [
        ("x", c_f32_p), ("x_len", u64), ("tokens", u64),
        ("router_weight", c_f32_p), ("router_weight_len", u64),
        ("expert_bias", c_f32_p), ("expert_bias_len", u64),
        ("w13", c_u8_p), ("w13_len", u64),
        ("w13_scales", c_f32_p), ("w13_scales_len", u64),
        ("w2", c_u8_p), ("w2_len", u64),
        ("w2_scales", c_f32_p), ("w2_scales_len", u64),
        ("shared_w13", c_u8_p), ("shared_w13_len", u64),
        ("shared_w13_scales", c_f32_p), ("shared_w13_scales_len", u64),
        ("shared_w2", c_u8_p), ("shared_w2_len", u64),
        ("shared_w2_scales", c_f32_p), ("shared_w2_scales_len", u64),
        ("shared_gate", c_f32_p), ("shared_gate_len", u64),
        ("num_experts", i64), ("top_k", i64), ("dim", i64), ("hidden_dim", i64),
        ("shared_hidden_dim", i64), ("group_size", i64), ("weight_bits", i64),
        ("score_func", i32),
        ("renormalize", i32),
        ("route_scale", ctypes.c_float),
        ("exact", i32),
        ("out", c_f32_p), ("out_len", u64),
        ("num_groups", i64), ("top_groups", i64),
        ("group_score", i32),
        ("weight_input", i32),
        ("jitter_eps", ctypes.c_float),
        ("renorm_eps", ctypes.c_float),
        ("renorm_min", ctypes.c_float),
        ("scales_out", i32),
    ]


class MobileMoeLinearArgs(ctypes.Structure):
    _fields_ = [
        ("x", c_f32_p), ("x_len", u64), ("rows", u64),
        ("weight", c_u8_p), ("weight_len", u64),
        ("scales", c_f32_p), ("scales_len", u64),
        ("bias", c_f32_p), ("bias_len", u64),
        ("in_features", i64), ("out_features", i64), ("group_size", i64), ("weight_bits", i64),
        ("exact", i32),
        ("out", c_f32_p), ("out_len", u64),
    ]


SCORE_FUNC_IDS = {"softmax": 0, "softmax_all": 1, "sigmoid": 2, "topk_sigmoid": 3, "sparsemixer": 4}
GROUP_SCORE_IDS = {"max": 0, "top2_sum": 1}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


class MobileMoELibraryError(RuntimeError):
    pass


def repo_root() -> Path:
    # python_export/mobilemoe_export -> repo root
    return REPO_ROOT


def lib_path() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return repo_root() / "target" / "release" / LIB_NAME


def lib_available() -> bool:
    return _lib is not None or lib_path().is_file()


def _declare(lib: ctypes.CDLL) -> None:
    lib.mobilemoe_last_error.restype = ctypes.c_char_p
    lib.mobilemoe_last_error.argtypes = []
    lib.mobilemoe_register.restype = i32
    lib.mobilemoe_register.argtypes = []
    lib.mobilemoe_set_num_threads.restype = i32
    lib.mobilemoe_set_num_threads.argtypes = [i32]
    lib.mobilemoe_version.restype = i32
    lib.mobilemoe_version.argtypes = []
    lib.mobilemoe_moe_ffn.restype = i32
    lib.mobilemoe_moe_ffn.argtypes = [ctypes.POINTER(MobileMoeFfnArgs)]
    lib.mobilemoe_int4_linear.restype = i32
    lib.mobilemoe_int4_linear.argtypes = [ctypes.POINTER(MobileMoeLinearArgs)]
    lib.mobilemoe_pack_weights.restype = i32
    lib.mobilemoe_pack_weights.argtypes = [
        c_i8_p, u64, c_f32_p, u64, i64, i64, i64, i64, c_u8_p, u64, c_f32_p, u64,
    ]


def get_lib() -> ctypes.CDLL:
    """The loaded library (loads it on first use). Raises :class:`MobileMoELibraryError` if missing."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        path = lib_path()
        if not path.is_file():
            hint = (
                f"${ENV_VAR} points to {path}, which does not exist"
                if os.environ.get(ENV_VAR)
                else f"{path} does not exist"
            )
            raise MobileMoELibraryError(
                f"MobileMoE runtime library not found: {hint}. Build it with `make build` at the "
                f"repository root (cargo build --release), or set {ENV_VAR} to the path of "
                f"{LIB_NAME}."
            )
        # Make sure libexecutorch.so is loaded first (the plugin links it; the Python runtime
        # must share the same copy so the registrations are visible to it).
        try:
            import executorch.runtime  # noqa: F401
        except Exception:  # pragma: no cover - executorch is a hard dependency
            pass
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        _declare(lib)
        rc = lib.mobilemoe_register()
        if rc != 0:
            raise MobileMoELibraryError(f"mobilemoe_register failed ({rc}): {last_error(lib)}")
        _lib = lib
        _lib_path = str(path)
        return lib


def last_error(lib: Optional[ctypes.CDLL] = None) -> str:
    lib = lib or _lib
    if lib is None:
        return "library not loaded"
    msg = lib.mobilemoe_last_error()
    return msg.decode("utf-8", "replace") if msg else "unknown error"


# Return codes of the C ABI (backend/src/error.rs ErrorCode, backend/cpp/mobilemoe.h).
ERROR_CODES = {1: "invalid argument", 2: "internal error", 3: "invalid program", 4: "not supported", 5: "out of memory"}


def check(rc: int, what: str) -> None:
    if rc != 0:
        kind = ERROR_CODES.get(rc, "unknown code")
        raise RuntimeError(f"{what} failed (code {rc}, {kind}): {last_error()}")


def load_runtime() -> str:
    """Load the MobileMoE plugin library (idempotent) and return its path.

    Call before loading a ``.pte`` with ``executorch.runtime.Runtime`` so that ``MobileMoEBackend``
    and the ``mobilemoe::*.out`` kernels are registered.
    """
    get_lib()
    assert _lib_path is not None
    return _lib_path


def set_num_threads(n: int) -> None:
    check(get_lib().mobilemoe_set_num_threads(int(n)), "mobilemoe_set_num_threads")


def version() -> int:
    return int(get_lib().mobilemoe_version())
