"""Symmetric per-group weight quantization and the T16K4 packed layout (docs/DESIGN.md sections 1, 2).

Numerics equal torchao 0.18's symmetric per-group path bit for bit (``choose_qparams_affine`` /
``get_group_qparams_symmetric`` / ``IntxFakeQuantizeConfig(..., is_symmetric=True,
scale_precision=torch.float32)``, used by ``Int8DynActInt4WeightQATQuantizer``)::

    max_abs = max(|w[n, g*G:(g+1)*G]|)                       (fp32)
    scale   = max(max_abs / ((qmax - qmin) / 2), eps)        eps = torch.finfo(float32).smallest_normal
    q       = clamp(round_half_even(w * (1 / scale)), qmin, qmax)
    w_hat   = q * scale

Note: torchao multiplies by the fp32 reciprocal ``1/scale`` (not a division) and clamps the scale at
``smallest_normal`` (not ``eps``); both are followed here so that QAT weights map bit for bit.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

TILE_ROWS = 16
CHUNK_K = 4
GROUP_SIZES = (32, 64, 128, 256)


def qrange(bits: int) -> Tuple[int, int]:
    if bits == 4:
        return -8, 7
    if bits == 8:
        return -128, 127
    raise ValueError(f"weight_bits must be 4 or 8, got {bits}")


def check_matrix(n: int, k: int, group_size: int, bits: int, what: str = "weight") -> None:
    qrange(bits)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{what}: group_size must be one of {GROUP_SIZES}, got {group_size}")
    if n <= 0 or k <= 0:
        raise ValueError(f"{what}: empty matrix [{n}, {k}]")
    if k % group_size != 0:
        raise ValueError(
            f"{what}: in_features K={k} is not divisible by group_size={group_size}"
        )


SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def scale_dtype(d) -> torch.dtype:
    """The per-group scale dtype named by ``d`` (a torch dtype, or "fp32" / "fp16" / "bf16")."""
    if isinstance(d, str):
        if d not in SCALE_DTYPES:
            raise ValueError(f"scale dtype {d!r}: expected one of {sorted(SCALE_DTYPES)}")
        return SCALE_DTYPES[d]
    if d not in SCALE_DTYPES.values():
        raise ValueError(f"scale dtype {d}: expected torch.float32, torch.float16 or torch.bfloat16")
    return d


def quantize_per_group(w: torch.Tensor, group_size: int = 32, bits: int = 4,
                       scales_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantize fp weights ``w [N, K]`` -> ``(q int8 [N, K], scales fp32 [N, K/G])``.

    torchao's symmetric per-group numerics with ``scales_precision=scales_dtype``: the scale is
    computed in fp32, clamped at the smallest normal fp32, cast to ``scales_dtype``; then
    ``q = round(w * (1 / scale))`` with the reciprocal computed in ``scales_dtype``. The returned
    scales are fp32 values that ``scales_dtype`` represents exactly. A group whose scale rounds to 0
    in ``scales_dtype`` quantizes to 0 (torchao would divide by zero).
    """
    scales_dtype = scale_dtype(scales_dtype)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"expected a 2-D weight [N, K], got {shape}")
    n, k = w.shape
    check_matrix(n, k, group_size, bits)
    qmin, qmax = qrange(bits)
    w = w.detach().to(torch.float32).cpu()
    wg = w.reshape(n, k // group_size, group_size)
    # torchao: max(-min(min,0), max(max,0)); same as max|w| (ignoring NaN propagation details).
    min_neg = torch.clamp(wg.amin(dim=-1), max=0.0)
    max_pos = torch.clamp(wg.amax(dim=-1), min=0.0)
    max_abs = torch.maximum(-min_neg, max_pos)
    scale = max_abs / (float(qmax - qmin) / 2)
    scale = torch.clamp(scale, min=torch.finfo(torch.float32).smallest_normal).to(scales_dtype)
    q = torch.clamp(torch.round(wg * (1.0 / scale.unsqueeze(-1))), qmin, qmax)
    q = torch.where((scale == 0).unsqueeze(-1), torch.zeros_like(q), q)
    return q.reshape(n, k).to(torch.int8), scale.to(torch.float32).contiguous()


def dequantize(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    return (q.to(torch.float32).reshape(n, k // group_size, group_size) * scales.reshape(n, -1, 1)).reshape(n, k)


def from_fake_quantized(w_hat: torch.Tensor, group_size: int = 32, bits: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Recover ``(q, scales)`` from already fake-quantized weights ``w_hat = q * scale`` (fp32).

    Useful when only a QAT model's fake-quantized weights are at hand. For each group the scale is
    recovered from its largest magnitude (``q`` is 7 or -8 there for INT4; 127 or -128 for INT8 —
    or any other integer if the group was clamped differently), then verified: every element must
    equal ``q * scale`` exactly in fp32. Raises ``ValueError`` naming the first inconsistent group.
    If the weights are the *original* float weights of a QAT model, use :func:`quantize_per_group`.
    """
    if w_hat.dim() != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got {tuple(w_hat.shape)}")
    n, k = w_hat.shape
    check_matrix(n, k, group_size, bits)
    qmin, qmax = qrange(bits)
    wg = w_hat.detach().to(torch.float32).cpu().reshape(n, k // group_size, group_size).numpy()
    q_out = np.zeros(wg.shape, dtype=np.int8)
    s_out = np.zeros(wg.shape[:2], dtype=np.float32)
    for r in range(wg.shape[0]):
        for g in range(wg.shape[1]):
            blk = wg[r, g]
            idx = int(np.argmax(np.abs(blk)))
            m = blk[idx]
            if m == 0:
                s_out[r, g] = np.float32(torch.finfo(torch.float32).smallest_normal)
                continue
            found = None
            candidates = []
            for qv in range(qmax, 0, -1) if m > 0 else range(qmin, 0):
                s0 = np.float32(m) / np.float32(qv)
                if s0 <= 0:
                    continue
                candidates.extend([s0, np.nextafter(s0, np.float32(np.inf)), np.nextafter(s0, np.float32(0))])
            for s in candidates:
                s = np.float32(s)
                qq = np.clip(np.round(blk / s), qmin, qmax)
                if np.array_equal((qq.astype(np.float32) * s).astype(np.float32), blk):
                    found = (qq.astype(np.int8), s)
                    break
            if found is None:
                raise ValueError(
                    f"weights are not fake-quantized {bits}-bit symmetric per-group values "
                    f"(row {r}, group {g}): no scale reproduces them"
                )
            q_out[r, g], s_out[r, g] = found
    return torch.from_numpy(q_out.reshape(n, k)), torch.from_numpy(s_out)


# ---------------------------------------------------------------------------------------------------
# T16K4 packing (numpy). Byte layout: docs/DESIGN.md section 2.


def packed_sizes(n: int, k: int, group_size: int, bits: int) -> Tuple[int, int]:
    """(data bytes, scale count) of one packed ``[n, k]`` matrix."""
    np_rows = -(-n // TILE_ROWS) * TILE_ROWS
    data = np_rows * k // 2 if bits == 4 else np_rows * k
    return data, np_rows * (k // group_size)


def pack(q, scales, group_size: int, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pack ``q [N, K]`` (int values in range) + ``scales [N, K/G]`` -> (uint8 data, fp32 scales)."""
    q = np.asarray(q.numpy() if isinstance(q, torch.Tensor) else q).astype(np.int32)
    scales = np.asarray(scales.detach().to(torch.float32).numpy() if isinstance(scales, torch.Tensor) else scales, dtype=np.float32)
    n, k = q.shape
    check_matrix(n, k, group_size, bits)
    qmin, qmax = qrange(bits)
    if q.min() < qmin or q.max() > qmax:
        raise ValueError(f"integer weights outside [{qmin}, {qmax}] for {bits}-bit")
    ng = k // group_size
    if scales.shape != (n, ng):
        scales = scales.reshape(n, ng)
    t = -(-n // TILE_ROWS)
    npad = t * TILE_ROWS
    qp = np.zeros((npad, k), dtype=np.int32)
    qp[:n] = q
    sp = np.zeros((npad, ng), dtype=np.float32)
    sp[:n] = scales
    c = group_size // CHUNK_K
    # qp[t*16 + r, g*G + c*4 + i] -> [t, r, g, c, i] -> [t, g, c, r, i]
    blk = qp.reshape(t, TILE_ROWS, ng, c, CHUNK_K).transpose(0, 2, 3, 1, 4)
    if bits == 4:
        lo = (blk[:, :, :, :8, :] + 8).astype(np.uint8)
        hi = (blk[:, :, :, 8:, :] + 8).astype(np.uint8)
        data = (lo | (hi << 4)).reshape(-1)
    else:
        data = blk.astype(np.int8).view(np.uint8).reshape(-1)
    # scales[(t*NG + g)*16 + r]
    s_out = sp.reshape(t, TILE_ROWS, ng).transpose(0, 2, 1).reshape(-1)
    return np.ascontiguousarray(data), np.ascontiguousarray(s_out)


def unpack(data, scales, n: int, k: int, group_size: int, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack`: -> (q int8 [n, k], scales fp32 [n, K/G])."""
    data = np.asarray(data.numpy() if isinstance(data, torch.Tensor) else data).view(np.uint8).reshape(-1)
    scales = np.asarray(scales.detach().to(torch.float32).numpy() if isinstance(scales, torch.Tensor) else scales).view(np.float32).reshape(-1)
    check_matrix(n, k, group_size, bits)
    nbytes, nscales = packed_sizes(n, k, group_size, bits)
    if data.size != nbytes or scales.size != nscales:
        raise ValueError(
            f"packed [{n}, {k}] G={group_size} {bits}-bit: expected {nbytes} bytes / {nscales} scales, "
            f"got {data.size} / {scales.size}"
        )
    t = -(-n // TILE_ROWS)
    ng = k // group_size
    c = group_size // CHUNK_K
    if bits == 4:
        d = data.reshape(t, ng, c, 8, CHUNK_K)
        lo = (d & 0x0F).astype(np.int32) - 8
        hi = (d >> 4).astype(np.int32) - 8
        blk = np.concatenate([lo, hi], axis=3)  # [t, g, c, 16, 4]
    else:
        blk = data.view(np.int8).reshape(t, ng, c, TILE_ROWS, CHUNK_K).astype(np.int32)
    q = blk.transpose(0, 3, 1, 2, 4).reshape(t * TILE_ROWS, k)[:n].astype(np.int8)
    s = scales.reshape(t, ng, TILE_ROWS).transpose(0, 2, 1).reshape(t * TILE_ROWS, ng)[:n]
    return q, np.ascontiguousarray(s)


def quantize_and_pack(w: torch.Tensor, group_size: int, bits: int,
                      scales_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp weights ``[N, K]`` -> (uint8 packed data 1-D, packed scales 1-D in ``scales_dtype``)."""
    q, s = quantize_per_group(w, group_size, bits, scales_dtype)
    d, sc = pack(q, s, group_size, bits)
    return torch.from_numpy(d), torch.from_numpy(sc).to(scale_dtype(scales_dtype))


def pack_experts(ws, group_size: int, bits: int,
                 scales_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack of E ``[N, K]`` fp weights (a 3-D tensor or a list) -> ``([E, bytes] u8, [E, scales])``."""
    datas, scs = [], []
    for w in ws:
        d, s = quantize_and_pack(w, group_size, bits, scales_dtype)
        datas.append(d)
        scs.append(s)
    return torch.stack(datas), torch.stack(scs)


def pack_quantized_experts(qs, ss, group_size: int, bits: int,
                           scales_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack of E pre-quantized ``(q [N, K], scales [N, K/G])`` -> ``([E, bytes], [E, scales])``; the
    scales must already be values of ``scales_dtype`` (as :func:`quantize_per_group` returns them)."""
    datas, scs = [], []
    for q, s in zip(qs, ss):
        d, sc = pack(q, s, group_size, bits)
        datas.append(torch.from_numpy(d))
        scs.append(torch.from_numpy(sc))
    return torch.stack(datas), _exact_cast(torch.stack(scs), scale_dtype(scales_dtype))


def _exact_cast(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``s`` as ``dtype``, refusing values it cannot represent (a second rounding would change the
    model the scales were trained or quantized for)."""
    out = s.to(dtype)
    if not torch.equal(out.to(torch.float32), s.to(torch.float32)):
        raise ValueError(f"scales are not exactly representable as {dtype}: quantize with scales_dtype={dtype}")
    return out
