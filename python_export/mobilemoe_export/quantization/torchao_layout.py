"""torchao's "universal" packed layout for ``linear_8bit_act_xbit_weight`` (what ExecuTorch's
``QuantizedMoEFFN`` stores per expert), and the conversion of a ``QuantizedMoEFFN`` to a
:class:`~mobilemoe_export.quantization.transforms.MoESpec`.

The x86 torchao 0.18 wheel does not ship the packer (``torchao::_pack_8bit_act_4bit_weight``), so
the layout is implemented here from torchao's portable packing code
(``torch_free_kernels/weight_packing/weight_packing.h`` + ``fallback/bitpacking``), with the
parameters ExecuTorch's ``llama::quantized_moe_ffn`` kernel unpacks with (``nr=8, kr=16, sr=2``):

- a 64-byte header: int32 ``magic = 6712``, int32 ``type = 1`` (linear_8bit_act_xbit_weight_universal),
  14 int32 params ``{version=1, weight_nbit, has_weight_zeros=0, has_bias=0, nr=8, kr=16, 0...}``;
- per block of ``nr`` rows, per group, per ``kr`` columns: the ``nr x kr`` int8 values reordered by
  ``pack_values(nr, kr, sr)`` and bit-packed (4-bit: ``+8``, then byte ``i`` of each 32-value chunk
  holds value ``i`` in the low and value ``i + 16`` in the high nibble; 8-bit: raw bytes); then the
  block's ``nr`` fp32 scales and ``nr`` int32 sums of the group's values;
- rows beyond ``n`` (padding to ``nr``) are zero.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

MAGIC = 6712
TYPE_UNIVERSAL = 1
HEADER_BYTES = 64
NR, KR, SR = 8, 16, 2


def header(bits: int) -> np.ndarray:
    h = np.zeros(16, dtype=np.int32)
    h[0], h[1] = MAGIC, TYPE_UNIVERSAL
    h[2:8] = [1, bits, 0, 0, NR, KR]
    return h


def packed_size(n: int, k: int, group_size: int, bits: int) -> int:
    ng = k // group_size
    per_n = (k // 8) * bits + 4 * ng + 4 * ng
    return HEADER_BYTES + per_n * (-(-n // NR) * NR)


def _reorder(block: np.ndarray) -> np.ndarray:
    """pack_values(nr=8, kr=16, sr=2): [nr, kr] -> 128 values (sr-major, then row, then kr/sr)."""
    return block.reshape(NR, SR, KR // SR).transpose(1, 0, 2).reshape(-1)


def _unreorder(vals: np.ndarray) -> np.ndarray:
    return vals.reshape(SR, NR, KR // SR).transpose(1, 0, 2).reshape(NR, KR)


def pack_universal(q, scales, group_size: int, bits: int) -> np.ndarray:
    """torchao universal packing of ``q [n, k]`` (int8) + ``scales [n, k/G]`` -> uint8 blob (with header)."""
    q = np.asarray(q.numpy() if isinstance(q, torch.Tensor) else q).astype(np.int8)
    s = np.asarray(scales.numpy() if isinstance(scales, torch.Tensor) else scales, dtype=np.float32)
    n, k = q.shape
    ng = k // group_size
    s = s.reshape(n, ng)
    npad = -(-n // NR) * NR
    qp = np.zeros((npad, k), dtype=np.int8)
    qp[:n] = q
    sp = np.zeros((npad, ng), dtype=np.float32)
    sp[:n] = s
    out = [header(bits).view(np.uint8)]
    for n0 in range(0, npad, NR):
        for g in range(ng):
            for kk in range(g * group_size, (g + 1) * group_size, KR):
                vals = _reorder(qp[n0:n0 + NR, kk:kk + KR])
                if bits == 8:
                    out.append(vals.view(np.uint8).copy())
                elif bits == 4:
                    u = (vals.astype(np.int16) + 8).astype(np.uint8).reshape(4, 32)
                    out.append(((u[:, 16:] << 4) | u[:, :16]).reshape(-1).astype(np.uint8))
                else:
                    raise ValueError(f"weight_nbit must be 4 or 8, got {bits}")
            out.append(sp[n0:n0 + NR, g].astype("<f4").view(np.uint8))
            sums = qp[n0:n0 + NR, g * group_size:(g + 1) * group_size].astype(np.int32).sum(-1)
            out.append(sums.astype("<i4").view(np.uint8))
    blob = np.concatenate(out)
    assert blob.size == packed_size(n, k, group_size, bits)
    return blob


def unpack_universal(blob, n: int, k: int, group_size: int, bits: int, what: str = "packed weight") -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_universal`: -> ``(q int8 [n, k], scales fp32 [n, k/G])``. Checks the header."""
    b = np.asarray(blob.numpy() if isinstance(blob, torch.Tensor) else blob).view(np.uint8).reshape(-1)
    if k % group_size or group_size % KR:
        raise ValueError(f"{what}: K={k} / group_size={group_size} incompatible with the torchao layout")
    need = packed_size(n, k, group_size, bits)
    if b.size < need:
        raise ValueError(f"{what}: {b.size} bytes, expected {need} for [{n}, {k}] G={group_size} {bits}-bit")
    h = b[:HEADER_BYTES].view(np.int32)
    if h[0] != MAGIC or h[1] != TYPE_UNIVERSAL:
        raise ValueError(f"{what}: not a torchao universal linear_8bit_act_xbit_weight blob (header {h[:2].tolist()})")
    if h[3] != bits or h[4] != 0 or h[5] != 0 or h[6] != NR or h[7] != KR:
        raise ValueError(f"{what}: unsupported packing params (version, nbit, zeros, bias, nr, kr) = {h[2:8].tolist()}; "
                         f"expected (1, {bits}, 0, 0, {NR}, {KR})")
    ng = k // group_size
    npad = -(-n // NR) * NR
    q = np.zeros((npad, k), dtype=np.int8)
    s = np.zeros((npad, ng), dtype=np.float32)
    pos = HEADER_BYTES
    chunk = NR * KR * bits // 8
    for n0 in range(0, npad, NR):
        for g in range(ng):
            for kk in range(g * group_size, (g + 1) * group_size, KR):
                raw = b[pos:pos + chunk]
                pos += chunk
                if bits == 8:
                    vals = raw.view(np.int8)
                else:
                    p = raw.reshape(4, 16)
                    u = np.concatenate([p & 0x0F, p >> 4], axis=1).reshape(-1)
                    vals = (u.astype(np.int16) - 8).astype(np.int8)
                q[n0:n0 + NR, kk:kk + KR] = _unreorder(vals)
            s[n0:n0 + NR, g] = b[pos:pos + 4 * NR].view("<f4")
            pos += 8 * NR  # scales + qval sums
    return q[:n], s[:n]


def spec_from_quantized_moe_ffn(m, name: str = "QuantizedMoEFFN"):
    """:class:`MoESpec` of an ExecuTorch ``QuantizedMoEFFN``: its integer weights and scales are kept as is."""
    from .transforms import MoESpec, _f32, _shared_from

    e, d, f = int(m.num_experts), int(m.dim), int(m.hidden_dim)
    g, bits = int(m.group_size), int(m.weight_nbit)
    w13, w2 = m.packed_w13, m.packed_w2
    if w13.dim() != 2 or w2.dim() != 2 or w13.shape[0] != e or w2.shape[0] != e:
        raise ValueError(f"{name}: packed_w13/packed_w2 must be 2-D [E={e}, bytes], got "
                         f"{tuple(w13.shape)} / {tuple(w2.shape)}")
    q13, q2 = [], []
    for i in range(e):
        q, s = unpack_universal(w13[i].cpu(), 2 * f, d, g, bits, f"{name}.packed_w13[{i}]")
        q13.append((torch.from_numpy(q), torch.from_numpy(s)))
        q, s = unpack_universal(w2[i].cpu(), d, f, g, bits, f"{name}.packed_w2[{i}]")
        q2.append((torch.from_numpy(q), torch.from_numpy(s)))
    bias = m.expert_bias if m.expert_bias is not None and m.expert_bias.numel() > 0 else None
    sf = m.score_func
    return MoESpec(
        router_weight=_f32(m.gate_weight), top_k=int(m.num_activated_experts), score_func=sf,
        renormalize=(sf == "sigmoid"), route_scale=float(m.route_scale),
        expert_bias=_f32(bias) if bias is not None else None, q13=q13, q2=q2, hidden_dim=f,
        shared=_shared_from(getattr(m, "shared_expert", None), f"{name}.shared_expert"),
        group_size=g, weight_bits=bits, output="same",
    )
