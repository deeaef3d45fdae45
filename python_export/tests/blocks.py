"""Small stand-ins for Hugging Face-style MoE blocks (structure only; no transformers import)."""

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):  # gate_proj / up_proj / down_proj
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MixtralExpert(nn.Module):  # w1 / w2 / w3
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _dispatch(x2d, experts, ids, weights):
    out = torch.zeros_like(x2d)
    for e, exp in enumerate(experts):
        w = (weights * (ids == e)).sum(-1, keepdim=True)
        out = out + w * exp(x2d)
    return out


class MixtralSparseMoeBlock(nn.Module):
    """transformers 4.x Mixtral: returns (hidden, router_logits)."""

    def __init__(self, d, f, e, k):
        super().__init__()
        self.hidden_dim, self.ffn_dim, self.num_experts, self.top_k = d, f, e, k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([MixtralExpert(d, f) for _ in range(e)])
        self.jitter_noise = 0.0

    def forward(self, x):
        b, s, d = x.shape
        x2d = x.view(-1, d)
        logits = self.gate(x2d)
        w = F.softmax(logits, dim=1, dtype=torch.float)
        w, ids = torch.topk(w, self.top_k, dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        return _dispatch(x2d, self.experts, ids, w).reshape(b, s, d), logits


class QwenMoeBlock(nn.Module):
    """Qwen2-MoE-like (shared expert + sigmoid gate); OLMoE-like when shared=False. Returns hidden only."""

    def __init__(self, d, f, e, k, norm_topk_prob, shared=True):
        super().__init__()
        self.num_experts, self.top_k, self.norm_topk_prob = e, k, norm_topk_prob
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([MLP(d, f) for _ in range(e)])
        if shared:
            self.shared_expert = MLP(d, 2 * f)
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)

    def forward(self, x):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        w = F.softmax(self.gate(x2d), dim=1, dtype=torch.float)
        w, ids = torch.topk(w, self.top_k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        out = _dispatch(x2d, self.experts, ids, w)
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(x2d)) * self.shared_expert(x2d)
        return out.reshape(shape)


class DeepseekTopkRouter(nn.Module):
    def __init__(self, d, e, k, scale, n_group=1, topk_group=1):
        super().__init__()
        self.top_k, self.n_routed_experts, self.routed_scaling_factor = k, e, scale
        self.n_group, self.topk_group, self.norm_topk_prob = n_group, topk_group, True
        self.weight = nn.Parameter(torch.randn(e, d) * 0.1)
        self.register_buffer("e_score_correction_bias", torch.randn(e) * 0.1)

    def forward(self, x2d):
        s = torch.sigmoid(F.linear(x2d, self.weight))
        _, ids = torch.topk(s + self.e_score_correction_bias, self.top_k, dim=-1)
        w = s.gather(1, ids)
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return ids, w * self.routed_scaling_factor


class DeepseekMoE(nn.Module):
    def __init__(self, d, f, e, k, scale=2.5, n_shared=1, n_group=1, topk_group=1):
        super().__init__()
        self.experts = nn.ModuleList([MLP(d, f) for _ in range(e)])
        self.gate = DeepseekTopkRouter(d, e, k, scale, n_group, topk_group)
        self.shared_experts = MLP(d, f * n_shared)

    def forward(self, x):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        ids, w = self.gate(x2d)
        return (_dispatch(x2d, self.experts, ids, w) + self.shared_experts(x2d)).reshape(shape)


class FusedExperts(nn.Module):
    def __init__(self, d, f, e):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * f, d) * 0.1)
        self.down_proj = nn.Parameter(torch.randn(e, d, f) * 0.1)


class FusedMixtralBlock(nn.Module):
    """transformers 5-style fused experts, returns hidden only."""

    def __init__(self, d, f, e, k):
        super().__init__()
        self.top_k = k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = FusedExperts(d, f, e)

    def forward(self, x):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        w = F.softmax(self.gate(x2d), dim=-1)
        w, ids = torch.topk(w, self.top_k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        f = self.experts.down_proj.shape[-1]
        out = torch.zeros_like(x2d)
        for e in range(self.experts.gate_up_proj.shape[0]):
            h = x2d @ self.experts.gate_up_proj[e].t()
            y = (F.silu(h[:, :f]) * h[:, f:]) @ self.experts.down_proj[e].t()
            out = out + (w * (ids == e)).sum(-1, keepdim=True) * y
        return out.reshape(shape)


class Wrapper(nn.Module):
    def __init__(self, block, d, out_proj=True):
        super().__init__()
        self.block = block
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        y = self.block(x)
        if isinstance(y, tuple):
            y = y[0]
        return self.proj(y.reshape(x.shape))
