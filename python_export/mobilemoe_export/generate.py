"""Text generation with an exported MobileMoE ``.pte`` on the ExecuTorch Python runtime.

    python -m mobilemoe_export.generate MODEL.pte --prompt "Once upon a time" --max-new-tokens 32 \
        [--tokenizer assets/tokenizer.json] [--temperature 0.8 --top-p 0.9 --seed 0] [--chat]

Tokenizer: ``--tokenizer``, else the ``tokenizer.json`` beside the ``.pte`` (written there by
``python -m mobilemoe_export --hf``), else the shipped one. The end-of-sequence token is the
``eos_token`` of the ``tokenizer_config.json`` beside it, else ``<|endoftext|>``. ``--chat`` wraps
the prompt in that config's chat template (a user turn plus the generation prompt).

Prefill runs the whole prompt in one call (``tokens [1, P]``, ``input_pos = 0..P``), then decode
feeds one token at a time (``input_pos = [p]``); the KV cache lives inside the program as mutable
buffers. ``max_seq_len`` and the vocabulary size are read from the program's method metadata
(upper bound of the dynamic token dimension; last dim of the logits). A prompt longer than
``max_seq_len`` is rejected with a clear error; generation stops at ``max_seq_len`` total tokens
(with a notice) or at ``<|endoftext|>``.

No cache reset is needed between two generations with the same loaded program: a call at
positions ``p..p+S`` overwrites those cache slots before reading them, and slots after the
current position are masked.

Sampling (identical in the Rust generator ``runner/src/generate.rs``, so that both give the same
tokens for the same logits and seed): ``temperature <= 0`` is greedy (argmax, lowest index on
ties). Otherwise, in f64: ``p_i = exp((l_i - max) / T)``, sort by ``p`` descending (index
ascending on ties), keep the shortest prefix whose sum reaches ``top_p * sum(p)``, draw
``u = rng.next_f64() * kept_sum`` and pick the first token whose running sum exceeds ``u``.
``rng`` is xorshift64* seeded through splitmix64 (see :class:`Rng`).

Stats (printed to stderr): prompt tokens, generated tokens, TTFT (start of prefill to the first
sampled token), prefill tok/s (prompt tokens / prefill call time), decode tok/s (tokens after the
first / decode time), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ._paths import ASSETS_DIR

DEFAULT_TOKENIZER = ASSETS_DIR / "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
MASK64 = (1 << 64) - 1


class PromptTooLongError(ValueError):
    pass


class Rng:
    """xorshift64* seeded with splitmix64(seed); ``next_f64`` in [0, 1) with 53 bits."""

    def __init__(self, seed: int) -> None:
        z = (seed + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        self.state = z or 0x2545F4914F6CDD1D

    def next_u64(self) -> int:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & MASK64

    def next_f64(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def sample(logits, temperature: float = 0.0, top_p: float = 1.0, rng: Optional[Rng] = None) -> int:
    """Pick the next token from ``logits`` (1-D). See the module docstring for the exact rule."""
    l = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0.0 or rng is None:
        return int(np.argmax(l))  # first maximum
    l = np.where(np.isnan(l), -np.inf, l)
    m = float(l.max())
    if not math.isfinite(m):
        return int(np.argmax(l))
    # math.exp and sequential sums: the same f64 operations as the Rust generator
    p = np.array([math.exp((float(v) - m) / temperature) for v in l], dtype=np.float64)
    order = np.lexsort((np.arange(len(p)), -p))  # p descending, index ascending
    ps = p[order]
    total = 0.0
    for v in ps:
        total += float(v)
    if top_p < 1.0:
        target = top_p * total
        acc, n = 0.0, 0
        for v in ps:
            acc += float(v)
            n += 1
            if acc >= target:
                break
        ps = ps[:n]
    kept = 0.0
    for v in ps:
        kept += float(v)
    u = rng.next_f64() * kept
    acc = 0.0
    for i, v in enumerate(ps):
        acc += float(v)
        if acc > u:
            return int(order[i])
    return int(order[len(ps) - 1])


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    peak_rss_mb: float = 0.0
    stopped: str = ""  # "max_new_tokens" | "eos" | "max_seq_len"

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else float("nan")

    def report(self) -> str:
        return (f"prompt tokens: {self.prompt_tokens}, generated tokens: {self.generated_tokens} "
                f"(stopped: {self.stopped})\n"
                f"TTFT: {self.ttft_s * 1000:.1f} ms, prefill: {self.prefill_tok_s:.1f} tok/s, "
                f"decode: {self.decode_tok_s:.1f} tok/s, peak RSS: {self.peak_rss_mb:.1f} MiB")


@dataclass
class GenerationResult:
    tokens: List[int] = field(default_factory=list)
    text: str = ""
    stats: GenerationStats = field(default_factory=GenerationStats)
    logits: List[np.ndarray] = field(default_factory=list)  # kept only if asked


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


PREFILL_CHUNK = 256  # largest number of prompt tokens per prefill call (runner/src/generate.rs)


def generate_tokens(
    forward: ForwardFn,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    max_seq_len: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: Optional[int] = None,
    on_token: Optional[Callable[[int], None]] = None,
    keep_logits: bool = False,
) -> GenerationResult:
    """Prefill + decode loop over any ``forward(tokens [1,S] int64, input_pos [S] int64) -> logits``
    (last V floats are the last token's logits): an eager model or a loaded ``.pte`` method."""
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("empty prompt: at least one token is needed")
    if n > max_seq_len:
        raise PromptTooLongError(
            f"prompt is {n} tokens but the model's max_seq_len is {max_seq_len}: shorten the prompt or "
            f"re-export with a larger --max-seq-len")
    rng = Rng(seed) if temperature > 0 else None
    res = GenerationResult()
    st = res.stats
    st.prompt_tokens = n
    t0 = time.perf_counter()
    ids = list(prompt_ids)
    for c0 in range(0, n, PREFILL_CHUNK):  # bounded scratch memory, as the Rust runner
        c1 = min(n, c0 + PREFILL_CHUNK)
        logits = forward(torch.tensor([ids[c0:c1]], dtype=torch.long), torch.arange(c0, c1, dtype=torch.long))
    t1 = time.perf_counter()
    st.prefill_s = t1 - t0
    pos = n
    stopped = "max_new_tokens"
    decode_start = None
    while len(res.tokens) < max_new_tokens:
        last = logits.reshape(-1)[-logits.shape[-1]:]  # the last token's logits
        if keep_logits:
            res.logits.append(last.detach().float().numpy().copy())
        tok = sample(last.detach().float().numpy(), temperature, top_p, rng)
        res.tokens.append(tok)
        if len(res.tokens) == 1:
            st.ttft_s = time.perf_counter() - t0
            decode_start = time.perf_counter()
        if on_token is not None:
            on_token(tok)
        if eos_id is not None and tok == eos_id:
            stopped = "eos"
            break
        if len(res.tokens) >= max_new_tokens:
            break
        if pos >= max_seq_len:
            stopped = "max_seq_len"
            break
        logits = forward(torch.tensor([[tok]], dtype=torch.long), torch.tensor([pos], dtype=torch.long))
        pos += 1
    if decode_start is not None:
        st.decode_s = time.perf_counter() - decode_start
    st.generated_tokens = len(res.tokens)
    st.stopped = stopped
    st.peak_rss_mb = peak_rss_mb()
    return res


class PteModel:
    """A loaded ``.pte`` with ``forward(tokens, input_pos) -> logits`` and its metadata."""

    def __init__(self, path, load_plugin: bool = True) -> None:
        if load_plugin:
            from .operators._lib import load_runtime

            try:
                load_runtime()
            except Exception as e:  # a program without MobileMoE ops still runs
                print(f"warning: MobileMoE runtime library not loaded ({e}); programs using "
                      f"MobileMoEBackend or mobilemoe:: kernels will fail to load", file=sys.stderr)
        from executorch.runtime import Runtime

        self.path = str(path)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"no such .pte: {self.path}")
        self.runtime = Runtime.get()
        self.program = self.runtime.load_program(self.path)
        self.method = self.program.load_method("forward")
        meta = self.program.metadata("forward")
        self.max_seq_len = int(meta.input_tensor_meta(0).sizes()[-1])
        self.vocab_size = int(meta.output_tensor_meta(0).sizes()[-1])

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.method.execute([tokens, input_pos])[0]


class StreamPrinter:
    """Incremental detokenization: print the text of the tokens so far, holding back an incomplete
    UTF-8 sequence (shown by the decoder as U+FFFD at the end)."""

    def __init__(self, tokenizer, out=sys.stdout) -> None:
        self.tok = tokenizer
        self.ids: List[int] = []
        self.printed = 0
        self.out = out

    def __call__(self, tok: int) -> None:
        self.ids.append(tok)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.printed:
            self.out.write(text[self.printed:])
            self.out.flush()
            self.printed = len(text)

    def finish(self) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.out.write(text[self.printed:])
        self.out.write("\n")
        self.out.flush()
        return text


def load_tokenizer(path=None):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path or DEFAULT_TOKENIZER))


def tokenizer_beside(pte) -> Optional[Path]:
    """The ``tokenizer.json`` in the ``.pte``'s directory (a ``--hf`` export writes it there), or None."""
    p = Path(pte).resolve().parent / "tokenizer.json"
    return p if p.is_file() else None


def _token_str(v) -> Optional[str]:
    # tokenizer_config.json stores special tokens as strings or as AddedToken dicts
    return v.get("content") if isinstance(v, dict) else v


def read_tokenizer_config(tokenizer_json) -> dict:
    p = Path(tokenizer_json).parent / "tokenizer_config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def chat_prompt(tokenizer_config, user_text: str) -> str:
    """``user_text`` as one user turn in the chat template of ``tokenizer_config`` (a path or a
    dict), with the generation prompt appended, rendered as transformers does (jinja2)."""
    cfg = tokenizer_config if isinstance(tokenizer_config, dict) else json.loads(Path(tokenizer_config).read_text())
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        raise ValueError("the tokenizer config has no chat template")
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
        bos_token=_token_str(cfg.get("bos_token")) or "", eos_token=_token_str(cfg.get("eos_token")) or "")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mobilemoe_export.generate",
                                 description="Generate text with a MobileMoE .pte on the ExecuTorch runtime "
                                             "(prefill + KV-cache decode), streaming tokens and timing stats.")
    ap.add_argument("model", type=Path, help=".pte exported by python -m mobilemoe_export")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="HF tokenizer.json (default: the one beside the .pte, else the shipped one)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    ap.add_argument("--threads", type=int, default=None, help="MobileMoE kernel threads")
    ap.add_argument("--chat", action="store_true",
                    help="wrap the prompt in the chat template of the tokenizer_config.json beside the tokenizer")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        print("error: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 < args.top_p <= 1.0:
        print("error: --top-p must be in (0, 1]", file=sys.stderr)
        return 2
    tok_path = args.tokenizer or tokenizer_beside(args.model) or DEFAULT_TOKENIZER
    tok = load_tokenizer(tok_path)
    tok_cfg = read_tokenizer_config(tok_path)
    prompt = args.prompt
    if args.chat:
        try:
            prompt = chat_prompt(tok_cfg, args.prompt)
        except ValueError as e:
            print(f"error: --chat: {e} ({Path(tok_path).parent / 'tokenizer_config.json'})", file=sys.stderr)
            return 2
    try:
        model = PteModel(args.model)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        from .operators._lib import set_num_threads

        set_num_threads(args.threads)
    if tok.get_vocab_size() > model.vocab_size:
        print(f"warning: tokenizer vocabulary ({tok.get_vocab_size()}) is larger than the model's "
              f"({model.vocab_size})", file=sys.stderr)
    # a chat template already spells out the special tokens it wants
    ids = tok.encode(prompt, add_special_tokens=not args.chat).ids
    eos = None if args.no_eos else tok.token_to_id(_token_str(tok_cfg.get("eos_token")) or EOS_TOKEN)
    if not ids or len(ids) > model.max_seq_len:
        try:  # the generator's own message, before anything is printed
            generate_tokens(model, ids, 1, model.max_seq_len)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    printer = StreamPrinter(tok)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    try:
        res = generate_tokens(model, ids, args.max_new_tokens, model.max_seq_len, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed, eos_id=eos, on_token=printer)
    except (PromptTooLongError, ValueError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    printer.finish()
    if res.stats.stopped == "max_seq_len":
        print(f"note: stopped at max_seq_len={model.max_seq_len}", file=sys.stderr)
    print(res.stats.report(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
