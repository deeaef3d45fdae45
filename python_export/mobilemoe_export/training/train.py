"""Train the embedded default MobileMoE on Shakespeare: the four-stage recipe at toy scale.

    python -m mobilemoe_export.train                     # full recipe (~35 min on one core), out: runs/default
    python -m mobilemoe_export.train --ship              # ... and copy the result to assets/default_model.pt
    python -m mobilemoe_export.train --arch dense --stages pre --out-dir runs/dense   # the dense baseline

Stages (each resumable from ``<out-dir>/stage_<name>.pt``; re-running skips finished stages and
continues an interrupted one from its last checkpoint; every step's loss goes to
``<out-dir>/train_log.jsonl``):

1. ``pre`` — pre-training: every training work in both editions (modern spelling and First
   Folio) plus the poems, 128-token windows, AdamW, linear warm-up then constant LR.
2. ``mid`` — mid-training: the *cleaner, longer-context* slice — modern-spelling editions only
   (one consistent orthography) in 256-token windows (the exported context) — with the LR annealed
   linearly to 5% (the "decay" phase of a warm-up/stable/decay schedule).
3. ``sft`` — instruction fine-tuning on a synthetic instruction set derived from the plays
   (:func:`train_data.instruction_examples`: "Give a speech by HAMLET about <keyword>." -> a real
   speech; "Reply as JULIET to: ..." -> her real reply; several phrasings of each) in a plain-text
   chat format (``### Instruction:`` / ``### Response: HAMLET:``, answer ended by
   ``<|endoftext|>``; :func:`train_data.chat_template` is the same format as a transformers chat
   template, shipped in ``assets/tokenizer_config.json``); loss on the answer tokens only, the
   ``SPEAKER:`` heading weighted 4x; instructions packed several to a row (each attends only to
   itself), half of the instruction rows heading-only drills, most with made-up speaker names
   (the model must copy the name, not recall it); a quarter of each batch replays
   plain text so the model keeps writing plays. Every ``--probe-every`` steps the log records the
   share of probe instructions (held-out plays, held-out speakers, training) whose greedy answer
   opens with the requested speaker, and every step the loss on answers, headings and replay.
4. ``qat`` — 4-bit quantization-aware training (weights symmetric per-group-32 INT4, exactly the
   numerics of docs/DESIGN.md section 1 / ``quant.quantize_per_group``, straight-through
   estimator) on every matrix ``quantize_moe(..., dense_linears=True)`` turns into INT4: routed
   experts, shared expert, attention projections, LM head — plus the embedding table, which the
   whole-decoder delegate (``decoder.lower_decoder``) also stores INT4 g32; router and norms stay
   fp32, as in the exported program. Same data mixture as stage 3, LR annealed to 0. The saved latent
   fp32 weights quantize (``quantize_moe``) to exactly the integers and scales trained against.

Model: the project's ``Transformer`` with ``MoEFeedForward`` (fine-grained routed experts + one
shared expert): :data:`DEFAULT_CONFIG`. Training uses a batched causal forward over the same
parameters (:func:`lm_forward`; equal to ``Transformer.forward`` — tested) with sparse expert
dispatch (each expert runs only on its tokens). Load balancing: auxiliary-loss-free (DeepSeek-V3):
sigmoid router scores, a per-expert selection bias (the model's ``expert_bias``, exported as is)
nudged after every step by ``bias_rate * sign(mean_load - load)``; no balance term in the loss, so
nothing pulls the LM gradient, and the bias is already part of the exported routing.

Determinism: ``--seed`` fixes the init and every batch (batch ``i`` of stage ``s`` is drawn from
``np.random.default_rng([seed, s, i])``, so a resumed run sees the same batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import models
from ..moe_block import MoEFeedForward, route
from . import train_data as data

DEFAULT_CONFIG = models.ModelConfig(
    name="shakespeare", vocab_size=1024, dim=192, n_layers=4, n_heads=6, n_kv_heads=2,
    max_seq_len=256, num_experts=16, top_k=2, expert_hidden_dim=64, shared_hidden_dim=192,
    score_func="sigmoid", renormalize=True, use_expert_bias=True, tie_embeddings=False,
)
SMOKE_CONFIG = DEFAULT_CONFIG.replace(name="smoke", dim=64, n_layers=2, n_heads=2, n_kv_heads=1,
                                      num_experts=4, expert_hidden_dim=32, shared_hidden_dim=64)
STAGES = ("pre", "mid", "sft", "qat")
SHIPPED = models.ASSETS / "default_model.pt"
SHIPPED_TOKENIZER_CONFIG = models.ASSETS / "tokenizer_config.json"


@dataclass
class StageSpec:
    name: str
    steps: int
    lr: float
    lr_end: float
    warmup: int = 0
    batch: int = 16
    ctx: int = 128
    data: str = "all"  # "all" | "modern" | "sft"
    qat: bool = False
    schedule: str = "constant"  # "constant" (after warm-up) | "linear" | "cosine" (lr -> lr_end)
    # instruction stages ("sft" data) only:
    replay: float = 0.25  # share of the batch's rows that are plain text (full-sequence loss)
    pack: bool = False  # several instructions per row, each attending only to itself
    head_weight: float = 1.0  # loss weight of the answer's `SPEAKER:` heading tokens
    heads: float = 0.0  # share of instruction rows packed with heading-only drills (prompt + `SPEAKER:`)
    fake_names: float = 0.0  # share of those drills whose speaker is a made-up name (copying, not recall)


def default_stages(scale: float = 1.0, peak: float = 2e-3) -> Dict[str, StageSpec]:
    s = lambda n: max(1, int(round(n * scale)))  # noqa: E731
    return {
        "pre": StageSpec("pre", s(1800), peak, peak, warmup=s(100), batch=16, ctx=128, data="all"),
        "mid": StageSpec("mid", s(500), peak, peak * 0.05, batch=8, ctx=256, data="modern", schedule="linear"),
        # Issue 29: 250 steps at 5e-4 with one instruction per padded row left the speaker heading
        # (~9 of ~65 answer tokens, ~5% of the gradient) unlearned. Packed rows (~2.2 instructions
        # each), heading tokens weighted 4x, half of the instruction rows heading-only drills (3/4
        # of them with made-up names: copying, which held-out speakers need), a 4x higher LR and
        # more steps; replay unchanged (1/4 of the rows) to keep plain text.
        "sft": StageSpec("sft", s(1200), 2e-3, 1e-4, warmup=s(20), batch=16, ctx=256, data="sft", schedule="cosine",
                         pack=True, head_weight=4.0, heads=0.5, fake_names=0.75),
        "qat": StageSpec("qat", s(300), 2e-4, 0.0, batch=16, ctx=256, data="sft", qat=True, schedule="cosine",
                         pack=True, head_weight=4.0, heads=0.5, fake_names=0.75),
    }


def lr_at(spec: StageSpec, step: int) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    if spec.schedule == "linear":
        return spec.lr + (spec.lr_end - spec.lr) * t
    if spec.schedule == "cosine":
        return spec.lr_end + 0.5 * (spec.lr - spec.lr_end) * (1 + math.cos(math.pi * t))
    return spec.lr


# ------------------------------------------------------------------------------------------------
# Fake quantization (docs/DESIGN.md section 1) with a straight-through estimator
def fake_quant(w: torch.Tensor, group_size: int = 32, bits: int = 4) -> torch.Tensor:
    """``w_hat = q * scale`` per row and group of ``group_size`` along the last dim, forward; identity
    gradient (STE). Bit-identical to ``quant.dequantize(*quant.quantize_per_group(w))``."""
    qmax = (1 << (bits - 1)) - 1
    qmin = -(1 << (bits - 1))
    shape = w.shape
    wg = w.reshape(-1, shape[-1] // group_size, group_size)
    with torch.no_grad():
        max_abs = torch.maximum(-torch.clamp(wg.amin(-1, keepdim=True), max=0.0),
                                torch.clamp(wg.amax(-1, keepdim=True), min=0.0))
        scale = torch.clamp(max_abs / (float(qmax - qmin) / 2), min=torch.finfo(torch.float32).smallest_normal)
        w_hat = (torch.clamp(torch.round(wg * (1.0 / scale)), qmin, qmax) * scale).reshape(shape)
    return w + (w_hat - w).detach()


# ------------------------------------------------------------------------------------------------
# Batched training forward over a models.Transformer's parameters
def moe_forward(ff: MoEFeedForward, x: torch.Tensor, q: Callable, load: Optional[torch.Tensor],
                trace: Optional[list] = None) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, ff.dim)
    weights, ids = route(F.linear(x2, ff.router.weight), ff.top_k, ff.score_func, ff.renormalize,
                         ff.route_scale, ff.expert_bias)
    if trace is not None:
        trace.append(ids.detach().clone())
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=ff.num_experts)
    tok = order // ff.top_k
    xs = x2[tok]
    w1, w3, w2 = q(ff.experts_w1), q(ff.experts_w3), q(ff.experts_w2)
    ys = []
    for e, xe in enumerate(torch.split(xs, counts.tolist())):
        if xe.shape[0]:
            ys.append(F.linear(F.silu(F.linear(xe, w1[e])) * F.linear(xe, w3[e]), w2[e]))
    y = torch.cat(ys) * weights.reshape(-1)[order].unsqueeze(1).to(x2.dtype)
    out = torch.zeros_like(x2).index_add(0, tok, y)
    se = ff.shared_expert
    if se is not None:
        sh = F.linear(F.silu(F.linear(x2, q(se.w1.weight))) * F.linear(x2, q(se.w3.weight)), q(se.w2.weight))
        if ff.shared_gate is not None:
            sh = torch.sigmoid(ff.shared_gate(x2)) * sh
        out = out + sh
    if load is not None:
        load += counts.to(load.dtype)
    return out.reshape(shape)


def lm_forward(model: models.Transformer, tokens: torch.Tensor, qat: bool = False,
               load: Optional[torch.Tensor] = None, trace: Optional[list] = None,
               doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits ``[B, S, V]`` for tokens ``[B, S]`` at positions ``0..S`` (causal). ``load``: optional
    ``[n_layers, E]`` tensor that receives the number of tokens routed to each expert; ``trace``: a
    list that receives each MoE layer's selected expert ids ``[B*S, top_k]``; ``doc``: optional
    ``[B, S]`` document ids of packed rows — a token attends only to earlier tokens of its own
    document (RoPE is relative, so a document's absolute offset in the row does not matter)."""
    cfg = model.cfg
    q = fake_quant if qat else (lambda w: w)
    B, S = tokens.shape
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    # the whole-decoder delegate stores the (untied) embedding table INT4 g32 too: QAT sees it
    h = F.embedding(tokens, q(model.tok_embeddings.weight)) if qat else model.tok_embeddings(tokens)
    cos, sin = model.rope_cos[:S], model.rope_sin[:S]
    if doc is not None:
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        attn_mask = (causal & (doc[:, :, None] == doc[:, None, :])).unsqueeze(1)  # [B, 1, S, S]
    for li, layer in enumerate(model.layers):
        a = layer.attention
        x = layer.attention_norm(h)
        qh = models.apply_rope(F.linear(x, q(a.wq.weight)).view(B, S, H, hd), cos, sin).transpose(1, 2)
        kh = models.apply_rope(F.linear(x, q(a.wk.weight)).view(B, S, Hkv, hd), cos, sin).transpose(1, 2)
        vh = F.linear(x, q(a.wv.weight)).view(B, S, Hkv, hd).transpose(1, 2)
        if H != Hkv:
            kh = kh.repeat_interleave(H // Hkv, dim=1)
            vh = vh.repeat_interleave(H // Hkv, dim=1)
        if doc is None:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=1.0 / math.sqrt(hd))
        else:
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=1.0 / math.sqrt(hd))
        h = h + F.linear(o.transpose(1, 2).reshape(B, S, H * hd), q(a.wo.weight))
        x = layer.ffn_norm(h)
        ff = layer.feed_forward
        if isinstance(ff, MoEFeedForward):
            h = h + moe_forward(ff, x, q, None if load is None else load[li], trace)
        else:
            h = h + F.linear(F.silu(F.linear(x, q(ff.w1.weight))) * F.linear(x, q(ff.w3.weight)), q(ff.w2.weight))
    return F.linear(model.norm(h), q(model.output.weight))


def init_for_training(model: models.Transformer, seed: int) -> models.Transformer:
    """GPT-2-style init: N(0, 0.02) matrices, residual outputs (wo, w2) scaled by 1/sqrt(2 L),
    norms 1, expert bias 0."""
    g = torch.Generator().manual_seed(seed)
    L = model.cfg.n_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            std = 0.02
            if name.endswith(("wo.weight", "w2.weight", "experts_w2")):
                std = 0.02 / math.sqrt(2 * L)
            p.normal_(0.0, std, generator=g)
        for m in model.modules():
            if isinstance(m, MoEFeedForward) and m.expert_bias is not None:
                m.expert_bias.zero_()
    return model


def new_model(cfg: models.ModelConfig, seed: int) -> models.Transformer:
    torch.manual_seed(seed)
    m = models.Transformer(cfg)
    init_for_training(m, seed)
    return m.train().requires_grad_(True)


# ------------------------------------------------------------------------------------------------
# Data
class Batch:
    """One training batch: tokens ``[B, S+1]``; per-position loss weights ``[B, S]`` (None: every
    position, weight 1); document ids ``[B, S]`` of packed rows (None: one document per row); and,
    for the log, which positions are answer / heading / replayed text."""

    def __init__(self, toks, weight=None, doc=None, parts=None) -> None:
        self.toks, self.weight, self.doc, self.parts = toks, weight, doc, parts or {}


class Corpus:
    def __init__(self, tok, smoke: bool = False, sft_max_len: int = 256, variants: bool = True,
                 probe_n: int = 64) -> None:
        works = data.load_works()
        train, held = data.split_works(works)
        if smoke:  # a small slice: two comedies and one tragedy (both editions), a poem
            keep = {"twelfth_night", "much_ado_about_nothing", "hamlet", "sonnets"}
            train = [w for w in train if w.key in keep]
        self.train_works, self.held_works = train, held
        tag = "smoke" if smoke else "full"
        self.all = data.encode_works(tok, train, f"{tag}_all")
        self.modern = data.encode_works(tok, [w for w in train if w.edition != "folio"], f"{tag}_modern")
        self.held = data.encode_works(tok, held, "heldout")
        self.held_modern = data.encode_works(tok, [w for w in held if w.edition == "modern"], "heldout_modern")
        nl = data.newline_ids(tok)
        vtag = "" if variants else "_v1"

        def enc(works, t):
            exs = data.encode_instructions(tok, data.instruction_examples(works, variants=variants), sft_max_len, t + vtag)
            return [(ids, start, data.heading_len(ids, start, nl)) for ids, start in exs]

        self.sft = enc(train, tag)
        self.held_sft = enc(held, "heldout")
        self.drills = self._name_drills(tok, data.instruction_examples(train, variants=variants), nl)
        # Probe sets for the instruction stages (logged during training): instructions of the
        # held-out plays whose speaker also speaks in a training play ("held-out play"), whose
        # speaker never does ("held-out speaker": a name the model never saw in a heading), and
        # training instructions.
        known = data.speakers(train)
        head = lambda ids, st, nh: (ids[:st + nh], st, nh)  # noqa: E731 (the rest of the answer is not scored)
        self.probes = {
            "held_play": [head(*e) for e in self.held_sft if self._who(tok, e) in known][:probe_n],
            "held_speaker": [head(*e) for e in self.held_sft if self._who(tok, e) not in known][:probe_n],
            "train": [head(*e) for e in self.sft[:probe_n]],
        }

    @staticmethod
    def _name_drills(tok, examples, nl, n: int = 8000, seed: int = 29):
        """Heading-only drills whose speaker is a made-up upper-case name (4-9 letters, one or
        two words): the model cannot have memorised it, so the only way to open the answer with
        it is to copy it from the instruction — the skill held-out speakers need."""
        rng = np.random.default_rng(seed)
        letters = np.array(list("ABCDEFGHIJKLMNOPRSTUVWY"))
        out = []
        for k in rng.permutation(len(examples))[:n]:
            ins, ans = examples[int(k)]
            who = ans.split(":\n", 1)[0]
            if who not in ins:
                continue
            fake = "".join(rng.choice(letters, size=int(rng.integers(4, 10))))
            if rng.random() < 0.2:
                fake = fake[:3] + " " + fake[3:]
            p = tok.encode(data.format_prompt(ins.replace(who, fake))).ids
            h = tok.encode(data.answer_heading(fake)).ids
            ids = np.asarray(p + h, dtype=np.int64)
            out.append((ids, len(p), data.heading_len(ids, len(p), nl)))
        return out

    @staticmethod
    def _who(tok, ex) -> str:
        ids, start, nh = ex
        return tok.decode([int(i) for i in ids[start:start + nh]]).strip().rstrip(":")

    def windows(self, stream: np.ndarray, rng, batch: int, ctx: int) -> torch.Tensor:
        starts = rng.integers(0, len(stream) - ctx - 1, size=batch)
        return torch.from_numpy(np.stack([stream[s:s + ctx + 1] for s in starts]).astype(np.int64))

    def batch(self, kind: str, rng, batch: int, ctx: int, spec: Optional["StageSpec"] = None) -> Batch:
        if kind in ("all", "modern"):
            return Batch(self.windows(self.all if kind == "all" else self.modern, rng, batch, ctx))
        replay, pack, hw, heads = (spec.replay, spec.pack, spec.head_weight, spec.heads) if spec else (0.25, False, 1.0, 0.0)
        fake = spec.fake_names if spec else 0.0
        n_text = int(round(batch * replay))
        n_ins = batch - n_text
        n_heads = int(round(n_ins * heads))
        L = ctx + 1
        toks = torch.zeros(batch, L, dtype=torch.long)
        w = torch.zeros(batch, L - 1)
        ans = torch.zeros(batch, L - 1, dtype=torch.bool)
        hd = torch.zeros(batch, L - 1, dtype=torch.bool)
        doc = torch.zeros(batch, L, dtype=torch.long)
        longest = 0
        for r in range(n_ins):
            pos, d = 0, 0
            drill = r >= n_ins - n_heads
            while True:
                ids, start, nh = self.sft[int(rng.integers(0, len(self.sft)))]
                if drill:  # the prompt and the heading only: the hard part (which name), several per row
                    ids = ids[:start + nh]
                    if fake and rng.random() < fake:
                        ids, start, nh = self.drills[int(rng.integers(0, len(self.drills)))]
                if pos == 0:
                    ids = ids[:L]  # (a row's first instruction is cut to the row if longer)
                elif pos + len(ids) > L:
                    break  # (the drawn example is dropped: the row is full)
                toks[r, pos:pos + len(ids)] = torch.from_numpy(ids.astype(np.int64))
                doc[r, pos:pos + len(ids)] = d
                a0 = pos + start - 1  # the position that predicts the answer's first token
                if not drill:
                    ans[r, a0:pos + len(ids) - 1] = True  # answer tokens incl. <|endoftext|>
                hd[r, a0:min(a0 + nh, pos + len(ids) - 1)] = True
                pos, d = pos + len(ids), d + 1
                if not pack:
                    break
            doc[r, pos:] = d  # padding: a document of its own
            longest = max(longest, pos)
        w[ans] = 1.0
        w[hd] = hw
        if n_text:
            toks[n_ins:] = self.windows(self.modern, rng, n_text, L - 1)
            w[n_ins:] = 1.0
        else:  # instruction rows only: no need to run the padding
            toks, w, ans, hd, doc = toks[:, :longest], w[:, :longest - 1], ans[:, :longest - 1], hd[:, :longest - 1], doc[:, :longest]
        rep = torch.zeros_like(ans)
        rep[n_ins:] = True
        return Batch(toks, w, doc[:, :-1] if pack else None, {"answer": ans, "heading": hd, "replay": rep})


def lm_loss(model, b: Batch, qat: bool, load=None, stats: Optional[dict] = None) -> torch.Tensor:
    """Mean cross-entropy over the weighted positions (sum of weight x loss / number of weighted
    positions, so a heading weight > 1 adds gradient without shrinking the rest); ``stats``
    receives the unweighted mean loss of each part of the batch (answer, heading, replay)."""
    toks = b.toks
    logits = lm_forward(model, toks[:, :-1], qat=qat, load=load, doc=b.doc)
    tgt = toks[:, 1:]
    if b.weight is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    l = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
    w = b.weight
    if stats is not None:
        with torch.no_grad():
            for k, m in b.parts.items():
                if m.any():
                    stats[k] = round(float(l[m].mean()), 5)
    return (l * w).sum() / (w > 0).sum().clamp(min=1)


@torch.no_grad()
def speaker_accuracy(model, exs, qat: bool = False, batch: int = 32) -> float:
    """Share of instructions ``(ids, start, heading_len)`` whose greedy answer opens with the
    requested ``SPEAKER:`` heading: teacher-forced argmax over the heading tokens (greedy
    generation produces exactly these tokens iff every one is the argmax given the ones before)."""
    if not exs:
        return float("nan")
    was = model.training
    model.eval()
    ok = 0
    for i in range(0, len(exs), batch):
        chunk = exs[i:i + batch]
        L = max(len(ids) for ids, _, _ in chunk)
        t = torch.zeros(len(chunk), L, dtype=torch.long)
        for r, (ids, _, _) in enumerate(chunk):
            t[r, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
        pred = lm_forward(model, t, qat=qat).argmax(-1)  # right padding: causal, so it is never seen
        for r, (ids, st, nh) in enumerate(chunk):
            ok += bool((pred[r, st - 1:st - 1 + nh] == t[r, st:st + nh]).all())
    model.train(was)
    return ok / len(exs)


@torch.no_grad()
def heldout_loss(model, stream: np.ndarray, ctx: int = 256, max_windows: int = 64, qat: bool = False) -> float:
    """Mean next-token loss over up to ``max_windows`` non-overlapping windows spread evenly."""
    n = (len(stream) - 1) // ctx
    idx = np.linspace(0, n - 1, min(n, max_windows)).astype(int)
    was = model.training
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, len(idx), 8):
        w = torch.from_numpy(np.stack([stream[j * ctx: j * ctx + ctx + 1] for j in idx[i:i + 8]]).astype(np.int64))
        logits = lm_forward(model, w[:, :-1], qat=qat)
        tot += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
        cnt += w[:, 1:].numel()
    model.train(was)
    return tot / cnt


# ------------------------------------------------------------------------------------------------
class Progress:
    def __init__(self, total: int, initial: int, desc: str, disable: bool) -> None:
        self.bar = None
        self.disable = disable
        self.total, self.n, self.desc = total, initial, desc
        self.t0 = time.time()
        if disable:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass

    def update(self, loss: float) -> None:
        self.n += 1
        if self.disable:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            self.bar.update(1)
        elif self.n % 10 == 0 or self.n == self.total:
            el = time.time() - self.t0
            w = 30 * self.n // max(1, self.total)
            print(f"\r{self.desc} [{'#' * w}{'.' * (30 - w)}] {self.n}/{self.total} loss {loss:.3f} {el:.0f}s",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable:
            print(file=sys.stderr)


def _decay_groups(model):
    decay, no = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "tok_embeddings" not in n else no).append(p)
    return [{"params": decay, "weight_decay": 0.1}, {"params": no, "weight_decay": 0.0}]


def _save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(fh, **kw) -> None:
    fh.write(json.dumps(kw) + "\n")
    fh.flush()


def run_stage(model, si: int, spec: StageSpec, corpus: Corpus, out: Path, args, logf) -> float:
    ck_path = out / f"stage_{spec.name}.pt"
    opt = torch.optim.AdamW(_decay_groups(model), lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
    step, elapsed, cpu_before = 0, 0.0, 0.0
    if ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        if ck.get("done"):
            print(f"stage {spec.name}: done (checkpoint {ck_path}), skipping", file=sys.stderr)
            return ck.get("cpu_seconds", ck.get("seconds", 0.0))
        opt.load_state_dict(ck["opt"])
        step, elapsed, cpu_before = ck["step"], ck.get("seconds", 0.0), ck.get("cpu_seconds", ck.get("seconds", 0.0))
        print(f"stage {spec.name}: resuming at step {step}/{spec.steps}", file=sys.stderr)
    cfg = model.cfg
    n_moe = cfg.n_layers if cfg.ffn == "moe" else 0
    bar = Progress(spec.steps, step, f"{si + 1}/4 {spec.name}", args.no_progress)
    model.train()
    t_start = time.time() - elapsed
    c_start = time.process_time() - cpu_before  # CPU seconds of this process (1 thread): the cost on one core

    def save(done: bool) -> None:
        _save(ck_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "done": done,
                        "seconds": time.time() - t_start, "cpu_seconds": time.process_time() - c_start,
                        "config": cfg.to_dict(), "spec": dataclasses.asdict(spec)})

    while step < spec.steps:
        lr = lr_at(spec, step)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([args.seed, si, step])
        b = corpus.batch(spec.data, rng, spec.batch, spec.ctx, spec)
        load = torch.zeros(n_moe, cfg.num_experts) if n_moe else None
        parts: dict = {}
        loss = lm_loss(model, b, spec.qat, load, parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if n_moe and args.bias_rate > 0:
            with torch.no_grad():
                for li, layer in enumerate(model.layers):
                    ld = load[li]
                    layer.feed_forward.expert_bias += args.bias_rate * torch.sign(ld.mean() - ld)
        step += 1
        rec = {"stage": spec.name, "step": step, "loss": round(loss.item(), 5), "lr": lr,
               "grad_norm": round(float(gn), 4), "sec": round(time.time() - t_start, 2),
               "cpu": round(time.process_time() - c_start, 2)}
        if n_moe:
            frac = load / load.sum(-1, keepdim=True)
            rec["max_load"] = round(float(frac.max() * cfg.num_experts), 3)  # 1.0 = perfectly balanced
        rec.update(parts)
        if spec.data == "sft" and args.probe_every and (step % args.probe_every == 0 or step == spec.steps):
            rec["probe"] = {k: round(speaker_accuracy(model, v, qat=spec.qat), 4) for k, v in corpus.probes.items()}
        _log(logf, **rec)
        bar.update(loss.item())
        if step % args.ckpt_every == 0 and step < spec.steps:
            save(False)
        if spec.name == "pre" and step in args.snapshots and step < spec.steps:
            models.save_checkpoint(model_copy(model), out / f"pre_step{step}_model.pt")
    bar.close()
    secs, cpu = time.time() - t_start, time.process_time() - c_start
    save(True)
    ev = heldout_loss(model, corpus.held, max_windows=args.eval_windows, qat=spec.qat)
    acc = {k: round(speaker_accuracy(model, v, qat=spec.qat), 4) for k, v in corpus.probes.items()}
    _log(logf, stage=spec.name, eval="heldout", loss=round(ev, 5), seconds=round(secs, 1), cpu_seconds=round(cpu, 1),
         probe=acc)
    print(f"stage {spec.name}: {spec.steps} steps in {cpu / 60:.1f} CPU min ({secs / 60:.1f} min wall), "
          f"held-out loss {ev:.4f} (ppl {math.exp(ev):.2f}); speaker opens the answer: "
          + ", ".join(f"{k} {v * 100:.0f}%" for k, v in acc.items()), file=sys.stderr)
    return cpu


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mobilemoe_export.train", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/default"))
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of pre,mid,sft,qat (in order)")
    ap.add_argument("--arch", choices=["moe", "dense"], default="moe",
                    help="dense: models.dense_baseline(cfg, match='active') with the same data and steps")
    ap.add_argument("--smoke", action="store_true", help="tiny model and corpus slice (the CI smoke test)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's step count")
    ap.add_argument("--steps", default=None, help="explicit steps per stage, e.g. pre=200,mid=50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--bias-rate", type=float, default=2e-3, help="aux-loss-free balancing bias step")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--snapshots", type=lambda v: {int(x) for x in v.split(",") if x}, default={1000},
                    help="pre-training steps at which to also save pre_step<N>_model.pt (MoE vs dense comparison)")
    ap.add_argument("--set", default=None, metavar="STAGE.FIELD=V,...",
                    help="override stage fields, e.g. sft.lr=1e-3,sft.head_weight=2,sft.pack=1 (see StageSpec)")
    ap.add_argument("--probe-every", type=int, default=100,
                    help="instruction stages: log the probe sets' speaker accuracy every N steps (0: never)")
    ap.add_argument("--probe-n", type=int, default=64, help="instructions per probe set")
    ap.add_argument("--single-phrasing", action="store_true",
                    help="instruction set with one phrasing per task (the recipe before issue 29)")
    ap.add_argument("--ship", action="store_true", help=f"copy the final checkpoint to {SHIPPED}")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..generate import load_tokenizer

    tok = load_tokenizer()
    try:
        corpus = Corpus(tok, smoke=args.smoke, variants=not args.single_phrasing, probe_n=args.probe_n)
    except data.CorpusUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = SMOKE_CONFIG if args.smoke else DEFAULT_CONFIG
    if args.arch == "dense":
        cfg = models.dense_baseline(cfg, match="active", multiple=32)
    specs = default_stages(args.steps_scale)
    if args.smoke:
        for s in specs.values():
            s.batch, s.ctx = 8, 64
    if args.steps:
        for kv in args.steps.split(","):
            k, v = kv.split("=")
            specs[k].steps = int(v)
            specs[k].warmup = min(specs[k].warmup, int(v) // 4)
    if args.set:
        for kv in args.set.split(","):
            k, v = kv.split("=")
            st, field = k.split(".")
            typ = type(getattr(specs[st], field))
            setattr(specs[st], field, bool(int(v)) if typ is bool else typ(v))
    # "ctl": the control for QAT (issue 26 item 3) — stage 4's steps, batches and LR schedule from
    # the SFT checkpoint without fake quantization, so that PTQ of it vs QAT compares like with like.
    # Not part of the recipe (nothing ships it).
    specs["ctl"] = dataclasses.replace(specs["qat"], name="ctl", qat=False)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES + ("ctl",)]
    if bad:
        print(f"error: unknown stage(s) {bad}", file=sys.stderr)
        return 2
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    model = new_model(cfg, args.seed)
    counts = models.count_params(cfg)
    print(f"model {cfg.name}: {counts['total'] / 1e6:.2f} M params, {counts['active'] / 1e6:.2f} M active; "
          f"train tokens {len(corpus.all):,} (modern {len(corpus.modern):,}), held-out {len(corpus.held):,}, "
          f"instructions {len(corpus.sft):,}", file=sys.stderr)
    (out / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "stages": {k: dataclasses.asdict(v) for k, v in specs.items()},
                                                 "seed": args.seed, "bias_rate": args.bias_rate,
                                                 "held_out": list(data.HELD_OUT)}, indent=1))
    total = 0.0
    with open(out / "train_log.jsonl", "a") as logf:
        for name in stages:
            si = STAGES.index("qat" if name == "ctl" else name)  # ctl draws the QAT stage's batches
            prev = "sft" if name == "ctl" else STAGES[si - 1]
            if si > 0 and not (out / f"stage_{name}.pt").exists():
                pk = out / f"stage_{prev}.pt"
                if not pk.exists():
                    print(f"error: stage {name} needs {pk} (run stage {prev} first)", file=sys.stderr)
                    return 2
                model.load_state_dict(torch.load(pk, map_location="cpu", weights_only=False)["model"])
            cpu = run_stage(model, si, specs[name], corpus, out, args, logf)
            total += cpu if name != "ctl" else 0.0
            final = model_copy(model)
            models.save_checkpoint(final, out / f"{name}_model.pt")
    print(f"recipe time (sum of stages, CPU time of one thread): {total / 60:.1f} min", file=sys.stderr)
    if args.ship and [s for s in stages if s != "ctl"][-1:] == ["qat"]:
        shutil.copyfile(out / "qat_model.pt", SHIPPED)  # (not the ctl model)
        # the chat template the instruction stage trained on, beside the shipped tokenizer, where
        # both runners' --chat look for it
        SHIPPED_TOKENIZER_CONFIG.write_text(json.dumps(data.tokenizer_config(cfg.max_seq_len), indent=1) + "\n")
        print(f"shipped {SHIPPED} ({SHIPPED.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


def model_copy(model: models.Transformer) -> models.Transformer:
    m = models.Transformer(model.cfg)
    m.load_state_dict(model.state_dict())
    return m.eval().requires_grad_(False)


if __name__ == "__main__":
    sys.exit(main())
