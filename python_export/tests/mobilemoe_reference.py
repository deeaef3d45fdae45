"""An independent reference forward of Meta's MobileMoE, written from the formulas of
docs/mobilemoe_format.md, in float64 plain PyTorch. It reads config.json and the safetensors
files itself (its own nibble unpacking and dequantization) and does NOT import mobilemoe_export:
the tests compare the project's loader, eager model and exported .pte against it.

    ref = MobileMoEReference(checkpoint_dir)
    logits = ref.logits(token_ids)          # [len(token_ids), vocab], every position (full recompute)
    steps = ref.incremental(prompt, steps)  # prefill + greedy decode: [(ids so far, last logits)]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import torch

F64 = torch.float64


def read_tensors(path) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (single file or index + shards), as stored."""
    from safetensors.torch import load_file

    path = Path(path)
    idx = path / "model.safetensors.index.json"
    if idx.is_file():
        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: Dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n/2] -> int64 [..., n]: byte j holds column 2j in bits 0-3 and 2j+1 in bits 4-7,
    each a 4-bit two's complement number."""
    b = packed.to(torch.int64)
    cols = torch.empty(*b.shape[:-1], b.shape[-1] * 2, dtype=torch.int64)
    cols[..., 0::2] = b % 16
    cols[..., 1::2] = b // 16
    return torch.where(cols >= 8, cols - 16, cols)


def dequant_last_dim(packed: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """value[..., c] = q[..., c] * scale[..., c // group] (the group axis is the last one, for the
    [out, in] linears and the [E, in, out] experts alike)."""
    q = nibbles(packed).to(F64)
    s = scale.to(F64).repeat_interleave(group, dim=-1)
    return q * s


def llama3_inv_freq(head_dim: int, theta: float, scaling) -> torch.Tensor:
    inv = torch.tensor([1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)], dtype=F64)
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inv
    factor = float(scaling["factor"])
    lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    out = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(f)
        elif wavelen > old / lo:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=F64)


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


class MobileMoEReference:
    """float64 MobileMoE forward over the weights of ``path`` (QAT or bf16 release)."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        c = json.loads((self.path / "config.json").read_text())
        self.c = c
        t = read_tensors(self.path)
        q = c.get("quantization")
        self.qat = q is not None
        g = int(q["group_size"]) if q else 0
        ge = int(q["embedding_group_size"]) if q else 0

        def lin(name: str, group: int = 0) -> torch.Tensor:  # [out, in]
            if self.qat:
                return dequant_last_dim(t[name + ".qweight"], t[name + ".weight_scale"], group or g)
            return t[name + ".weight"].to(F64)

        def experts(name: str) -> torch.Tensor:  # [E, in, out]
            if self.qat:
                return dequant_last_dim(t[name + "_qweight"], t[name + "_scale"], g)
            return t[name + "_proj"].to(F64)

        self.H = c["hidden_size"]
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or self.H // self.nh
        self.I = c["intermediate_size"]
        self.k = c["num_experts_per_tok"]
        self.eps = c["rms_norm_eps"]
        self.rsf = c["routed_scaling_factor"]
        self.qk_norm = c["use_qk_norm"]
        self.emb = lin("model.embed_tokens", ge)
        self.head = self.emb if c["tie_word_embeddings"] else lin("lm_head")
        self.norm = t["model.norm.weight"].to(F64)
        self.layers = []
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            self.layers.append(dict(
                n1=t[p + "input_layernorm.weight"].to(F64), n2=t[p + "post_attention_layernorm.weight"].to(F64),
                q=lin(p + "self_attn.q_proj"), k=lin(p + "self_attn.k_proj"), v=lin(p + "self_attn.v_proj"),
                o=lin(p + "self_attn.o_proj"),
                router=t[p + "feed_forward.router.weight"].to(F64), bias=t[p + "feed_forward.expert_bias"].to(F64),
                gate_up=experts(p + "feed_forward.experts.gate_up"), down=experts(p + "feed_forward.experts.down"),
                sg=lin(p + "feed_forward.shared_expert.gate_proj"), su=lin(p + "feed_forward.shared_expert.up_proj"),
                sd=lin(p + "feed_forward.shared_expert.down_proj"),
            ))
        self.inv_freq = llama3_inv_freq(self.hd, float(c["rope_theta"]), c.get("rope_scaling"))

    # ------------------------------------------------------------------------------------------
    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """x [S, heads, hd]: rotate the adjacent pairs (x[2i], x[2i+1]) of position s by s * inv_freq[i]."""
        S = x.shape[0]
        ang = torch.arange(S, dtype=F64)[:, None] * self.inv_freq[None, :]  # [S, hd/2]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        re, im = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = re * cos - im * sin
        out[..., 1::2] = re * sin + im * cos
        return out

    def attention(self, x: torch.Tensor, L: dict) -> torch.Tensor:
        S = x.shape[0]
        q = (x @ L["q"].T).reshape(S, self.nh, self.hd)
        k = (x @ L["k"].T).reshape(S, self.nkv, self.hd)
        v = (x @ L["v"].T).reshape(S, self.nkv, self.hd)
        q, k = self.rope(q), self.rope(k)
        if self.qk_norm:
            q, k = rms(q, self.eps), rms(k, self.eps)
        out = torch.empty(S, self.nh, self.hd, dtype=F64)
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        for h in range(self.nh):
            kv = h // (self.nh // self.nkv)
            scores = (q[:, h] @ k[:, kv].T) / math.sqrt(self.hd)
            scores = scores.masked_fill(~causal, float("-inf"))
            out[:, h] = torch.softmax(scores, dim=-1) @ v[:, kv]
        return out.reshape(S, self.nh * self.hd) @ L["o"].T

    def moe(self, x: torch.Tensor, L: dict) -> torch.Tensor:
        out = torch.zeros_like(x)
        s = torch.sigmoid(x @ L["router"].T)  # [S, E]
        for t in range(x.shape[0]):
            keys = torch.sort(s[t] + L["bias"], descending=True).values
            if self.k < keys.numel():  # how close the last chosen expert is to the first left out
                self.route_margin = min(self.route_margin, float(keys[self.k - 1] - keys[self.k]))
            chosen = torch.topk(s[t] + L["bias"], self.k).indices  # the bias only chooses
            w = s[t, chosen]
            w = w * self.rsf / (w.sum() + 1e-20)
            for wk, e in zip(w.tolist(), chosen.tolist()):
                gu = x[t] @ L["gate_up"][e]  # [2I]: gate = first I, up = next I
                h = torch.nn.functional.silu(gu[: self.I]) * gu[self.I:]
                out[t] += wk * (h @ L["down"][e])
            sh = torch.nn.functional.silu(L["sg"] @ x[t]) * (L["su"] @ x[t])
            out[t] += L["sd"] @ sh  # the shared expert, ungated
        return out

    def logits(self, ids) -> torch.Tensor:
        """Logits ``[len(ids), vocab]`` (float64) of every position of ``ids``. ``route_margin``: the
        smallest gap, over this call's tokens and layers, between the selection keys of the last chosen
        expert and the first one left out (a perturbation larger than that may choose other experts)."""
        self.route_margin = math.inf
        h = self.emb[torch.as_tensor(list(ids), dtype=torch.long)]
        for L in self.layers:
            h = h + self.attention(rms(h, self.eps) * L["n1"], L)
            h = h + self.moe(rms(h, self.eps) * L["n2"], L)
        return (rms(h, self.eps) * self.norm) @ self.head.T

    def incremental(self, prompt: List[int], steps: int) -> List[Tuple[List[int], torch.Tensor]]:
        """Prefill ``prompt``, then ``steps`` greedy decode steps (full recompute each step):
        ``[(ids fed so far, logits of the last position)]``, ``steps + 1`` entries; ``min_route_margin``:
        the smallest ``route_margin`` of the steps."""
        ids = list(prompt)
        out = []
        self.min_route_margin = math.inf
        for i in range(steps + 1):
            last = self.logits(ids)[-1]
            self.min_route_margin = min(self.min_route_margin, self.route_margin)
            out.append((list(ids), last))
            if i < steps:
                ids.append(int(last.argmax()))
        return out
