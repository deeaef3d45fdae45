"""``python -m mobilemoe_export``: build a model, quantize its MoE FFNs, export a ``.pte``.

Examples::

    python -m mobilemoe_export --preset tiny --out tiny.pte
    python -m mobilemoe_export --preset S --max-seq-len 512 --out s.pte
    python -m mobilemoe_export --preset S --dense-baseline total --out s_dense.pte
    python -m mobilemoe_export --preset mobilellm-pro --out mobilellm_pro.pte   # the dense baseline
    python -m mobilemoe_export --checkpoint my.ckpt --out my.pte          # save_checkpoint() format
    python -m mobilemoe_export --module-file my_model.py [--checkpoint sd.pt] --out my.pte
    python -m mobilemoe_export --hf ./olmoe-dir --max-seq-len 1024 --out olmoe.pte   # save_pretrained dir

``--hf``: a Hugging Face ``save_pretrained`` directory (needs ``transformers``: the ``hf`` extra).
Its MoE blocks and every other linear are quantized, the model is exported with a KV cache and a
dynamic token dimension, and ``tokenizer.json`` + ``tokenizer_config.json`` (with the chat template)
are written beside the ``.pte``, where ``mobilemoe_export.generate`` finds them. A directory of
Meta's MobileMoE release (config.json ``"model_type": "mobilemoe"``) is loaded by this project's own
loader instead (:mod:`mobilemoe_export.sources.mobilemoe`, no transformers): the QAT release keeps its
INT4 integers and fp16 scales, the bf16 Base/SFT release is quantized here (PTQ).

``--module-file``: a Python file defining ``build_model()`` (or ``build_model(max_seq_len)``)
returning an ``nn.Module`` with ``forward(tokens int64 [1, S], input_pos int64 [S])``; optionally
``example_inputs(model)`` and ``dynamic_shapes(model)`` (torch.export formats). With
``--checkpoint`` too, that file's state dict (or its ``"state_dict"`` entry) is loaded into it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from . import models


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m mobilemoe_export",
        description="Build a MobileMoE-style model (or load yours), quantize its MoE FFNs to INT4/INT8 "
                    "(quantize_moe) and export an ExecuTorch .pte with a dynamic token dimension (export_pte).",
        epilog=__doc__.split("Examples::", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = ap.add_argument_group("model source (one of)")
    src.add_argument("--preset", choices=list(models.PRESETS),
                     help="built-in config with seeded random weights: "
                          + "; ".join(f"{k} = {models.preset_summary(k)}" for k in models.PRESETS))
    src.add_argument("--module-file", type=Path, help="Python file defining build_model() (see below)")
    src.add_argument("--checkpoint", type=Path,
                     help="models.save_checkpoint() file, or a state dict for --module-file")
    src.add_argument("--hf", type=Path, metavar="DIR",
                     help="Hugging Face save_pretrained directory (config.json, safetensors, tokenizer)")
    ap.add_argument("--dense-baseline", choices=["total", "active"],
                    help="with an MoE --preset: the dense baseline instead (FFN weights = MoE total or active); "
                         "the published dense baseline is --preset mobilellm-pro")
    ap.add_argument("--group-size", type=int, default=32, choices=[32, 64, 128, 256])
    ap.add_argument("--weight-bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--fp32-linears", action="store_true",
                    help="quantize only the FFNs; keep the other nn.Linear (attention, LM head) in fp32. "
                         "Default: those use int4_linear too, because ExecuTorch's stock fp32 linear "
                         "(permute_copy + portable mm) is very slow for anything beyond the tiny preset")
    ap.add_argument("--exact", action="store_true", help="fp32-activation kernels instead of the Q8 fast path")
    ap.add_argument("--scales", choices=["fp32", "fp16", "bf16"], default=None,
                    help="per-group scale precision (torchao's scales_precision); fp16/bf16 halve the scale "
                         "bytes (~10%% fewer weight bytes per token). Default: fp16 for --preset (random weights) "
                         "unless --no-delegate, fp32 otherwise (a checkpoint keeps the precision it was trained / QAT'd with)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="KV cache length = largest token count (default: the preset's: tiny 256, S/M/L and "
                         "mobilellm-pro 2048; MobileMoE's context is 8192)")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="with --preset: override the layer count (e.g. a 2-layer S for quick benchmarks)")
    ap.add_argument("--out", type=Path, required=False, help="output .pte path (a .json sidecar is written next to it)")
    ap.add_argument("--no-delegate", action="store_true",
                    help="keep mobilemoe ops as custom-op kernels instead of lowering to MobileMoEBackend")
    ap.add_argument("--per-op", action="store_true",
                    help="one delegate per MoE/linear op, attention and norms on ExecuTorch's portable kernels "
                         "(default: the whole decoder in one MobileMoEBackend delegate)")
    ap.add_argument("--kv-cache", choices=["fp16", "fp32"], default="fp16",
                    help="KV cache element type of the whole-decoder delegate (default fp16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (presets)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--summary-json", type=Path, help="also write the summary here")
    return ap


# ----------------------------------------------------------------------------------------------
def _load_module_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"_mobilemoe_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "build_model"):
        raise SystemExit(f"error: {path} defines no build_model()")
    return mod


def _load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ck, dict) and "state_dict" in ck:
        ck = ck["state_dict"]
    if not isinstance(ck, dict):
        raise SystemExit(f"error: {path} holds no state dict")
    return ck


def build_from_args(args) -> Tuple[nn.Module, Optional[models.ModelConfig], Any, Any]:
    """-> (model, config or None, example_args, dynamic_shapes)."""
    hf = getattr(args, "hf", None)
    n_src = sum(x is not None for x in (args.preset, args.module_file, hf)) + (
        1 if args.checkpoint is not None and args.module_file is None else 0)
    if n_src != 1:
        raise SystemExit("error: give exactly one of --preset, --module-file [--checkpoint], --checkpoint, --hf")
    if args.dense_baseline and not args.preset:
        raise SystemExit("error: --dense-baseline needs --preset")
    if args.n_layers is not None and not args.preset:
        raise SystemExit("error: --n-layers needs --preset")
    cfg = None
    if hf is not None and _is_mobilemoe(hf):
        # Meta's MobileMoE release: this project's own loader (no transformers)
        model = _load_mobilemoe(hf, args)
        return model, model.cfg, model.example_inputs(), model.dynamic_shapes()
    if hf is not None:
        from .sources import hf_export

        hf_model = hf_export.load_hf_model(hf)
        program = hf_export.HFCausalLMProgram(hf_model, args.max_seq_len or hf_export.default_max_seq_len(hf_model))
        return program, None, program.example_inputs(), program.dynamic_shapes()
    if args.preset:
        cfg = models.get_config(args.preset)
        if args.max_seq_len:
            cfg = cfg.replace(max_seq_len=args.max_seq_len)
        if args.n_layers:
            cfg = cfg.replace(n_layers=args.n_layers)
        if args.dense_baseline:
            if cfg.ffn != "moe":
                raise SystemExit(f"error: --dense-baseline needs an MoE preset; {args.preset} is dense already")
            cfg = models.dense_baseline(cfg, match=args.dense_baseline, multiple=max(64, args.group_size))
        model = models.build_model(cfg, seed=args.seed)
    elif args.module_file:
        mod = _load_module_file(args.module_file)
        fn = mod.build_model
        params = inspect.signature(fn).parameters
        model = fn(args.max_seq_len) if params and args.max_seq_len else fn()
        if args.checkpoint:
            missing, unexpected = model.load_state_dict(_load_state_dict(args.checkpoint), strict=False)
            missing = [m for m in missing if not m.endswith(("k_cache", "v_cache"))]
            if missing or unexpected:
                raise SystemExit(f"error: checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        cfg = getattr(model, "cfg", None) if isinstance(getattr(model, "cfg", None), models.ModelConfig) else None
        ex = mod.example_inputs(model) if hasattr(mod, "example_inputs") else None
        ds = mod.dynamic_shapes(model) if hasattr(mod, "dynamic_shapes") else None
        model.eval().requires_grad_(False)
        if ex is None and hasattr(model, "example_inputs"):
            ex = model.example_inputs()
        if ds is None and hasattr(model, "dynamic_shapes"):
            ds = model.dynamic_shapes()
        if ex is None:
            raise SystemExit("error: the module file must define example_inputs(model)")
        return model, cfg, ex, ds
    else:
        model = models.load_checkpoint(args.checkpoint, max_seq_len=args.max_seq_len)
        model.requires_grad_(False)
        cfg = model.cfg
    return model, cfg, model.example_inputs(), model.dynamic_shapes()


def _is_mobilemoe(hf: Path) -> bool:
    from .sources.mobilemoe import is_mobilemoe_dir

    return is_mobilemoe_dir(hf)


def _mobilemoe_info(cfg: Optional[models.ModelConfig]) -> Optional[Dict[str, Any]]:
    """``cfg.extra`` of a model loaded by :func:`mobilemoe_export.sources.mobilemoe.load_mobilemoe`."""
    extra = getattr(cfg, "extra", None) or {}
    return extra if extra.get("source") == "mobilemoe" else None


def _load_mobilemoe(hf: Path, args) -> nn.Module:
    """A MobileMoE checkpoint directory (``model_type: "mobilemoe"``) for ``--hf``: the QAT release keeps
    its INT4 integers, fp16 scales and group size (options that contradict them are refused); the bf16
    release is quantized by the usual path (PTQ)."""
    from .sources.mobilemoe import MobileMoEFormatError, load_mobilemoe, read_mobilemoe_config

    try:
        ck = read_mobilemoe_config(hf, args.max_seq_len)
        if ck.format == "qat":
            if args.weight_bits != 4:
                raise SystemExit(f"error: {hf} is the MobileMoE QAT release (INT4): --weight-bits {args.weight_bits} "
                                 f"is not possible")
            if getattr(args, "scales", None) not in (None, "fp16"):
                raise SystemExit(f"error: {hf} is the MobileMoE QAT release: its scales are fp16 as trained; "
                                 f"--scales {args.scales} is not possible")
            if ck.group_size != ck.embedding_group_size and whole_model_of(args) is None:
                raise SystemExit(f"error: {hf}: group_size {ck.group_size} != embedding_group_size "
                                 f"{ck.embedding_group_size}; the whole-decoder delegate uses one group size "
                                 f"(export with --per-op)")
            if args.group_size != ck.group_size:
                print(f"note: {hf} is quantized with group size {ck.group_size}: using it (not --group-size "
                      f"{args.group_size})", file=sys.stderr)
                args.group_size = ck.group_size
        model = load_mobilemoe(hf, args.max_seq_len, exact=args.exact)
    except MobileMoEFormatError as e:
        raise SystemExit(f"error: {hf}: {e}")
    print(f"note: {hf}: MobileMoE {ck.format} release ({model.cfg.name}); {ck.quantization}", file=sys.stderr)
    return model


def _mobilemoe_extra(hf: Path, out: Path, model: nn.Module, info: Dict[str, Any]) -> Dict[str, Any]:
    """Tokenizer files beside the .pte, end-of-sequence ids and the release for the summary."""
    from .sources import hf_export
    from .sources.mobilemoe import read_mobilemoe_config

    written = []
    if (Path(hf) / "tokenizer.json").is_file():  # copied as is: no transformers needed
        written = hf_export.write_tokenizer(hf, Path(out).resolve().parent)
    else:
        print(f"warning: {hf} has no tokenizer.json; none written beside {out}", file=sys.stderr)
    ck = read_mobilemoe_config(hf, model.cfg.max_seq_len)
    return {"hf_model_type": "mobilemoe", "mobilemoe_format": info["format"], "quantization": ck.quantization,
            "tokenizer": [Path(w).name for w in written], "eos_token_ids": list(info.get("eos_token_ids") or []),
            "max_seq_len": model.cfg.max_seq_len, "vocab_size": model.cfg.vocab_size}


def quantize(model: nn.Module, cfg: Optional[models.ModelConfig], args) -> nn.Module:
    from .quantization.transforms import MobileMoELinear, quantize_moe

    if cfg is not None and cfg.ffn == "dense" and args.fp32_linears:
        # dense baseline: quantize exactly the FFN matrices (what the MoE model quantizes)
        for i, layer in enumerate(model.layers):
            ff = layer.feed_forward
            for n in ("w1", "w2", "w3"):
                lin = getattr(ff, n)
                setattr(ff, n, MobileMoELinear(lin.weight, None, args.group_size, args.weight_bits,
                                               exact=args.exact, name=f"layers.{i}.feed_forward.{n}",
                                               scales_dtype=scales_of(args)))
        return model
    return quantize_moe(model, group_size=args.group_size, weight_bits=args.weight_bits,
                        dense_linears=not args.fp32_linears, exact=args.exact, scales_dtype=scales_of(args))


def scales_of(args) -> str:
    """The per-group scale precision for these options (see ``--scales``)."""
    if getattr(args, "scales", None):
        return args.scales
    # the portable kernels of --no-delegate read fp32 scales
    return "fp16" if getattr(args, "preset", None) and not getattr(args, "no_delegate", False) else "fp32"


def scale_dtype_names(model: nn.Module) -> str:
    """The per-group scale types of the model's quantized modules (e.g. "fp16"), as stored."""
    from .quantization.transforms import MobileMoEFFN, MobileMoELinear

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    found = set()
    for m in model.modules():
        s = m.w13_scales if isinstance(m, MobileMoEFFN) else m.scales if isinstance(m, MobileMoELinear) else None
        if s is not None:
            found.add(names.get(s.dtype, str(s.dtype)))
    return "/".join(sorted(found)) or "no"


def quantized_weight_bytes(model: nn.Module) -> int:
    from .quantization.transforms import MobileMoEFFN, MobileMoELinear

    total = 0
    for m in model.modules():
        if isinstance(m, MobileMoEFFN):
            names = ("w13", "w13_scales", "w2", "w2_scales", "shared_w13", "shared_w13_scales",
                     "shared_w2", "shared_w2_scales")
        elif isinstance(m, MobileMoELinear):
            names = ("weight", "scales")
        else:
            continue
        for n in names:
            b = getattr(m, n, None)
            if b is not None:
                total += b.numel() * b.element_size()
    return total


def module_param_counts(model: nn.Module) -> Dict[str, int]:
    """Total / active parameter counts of an (unquantized) module, from its MoEFeedForward blocks."""
    from .moe_block import MoEFeedForward

    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for m in model.modules():
        if isinstance(m, MoEFeedForward):
            per = m.experts_w1[0].numel() + m.experts_w3[0].numel() + m.experts_w2[0].numel()
            inactive += (m.num_experts - m.top_k) * per
    return {"total": total, "active": total - inactive}


def pte_summary(path: Path) -> Dict[str, Any]:
    """Delegate calls, backend ids and operators of a .pte (read from its flatbuffer)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(path).read_bytes())
    prog = getattr(pte, "program", pte)
    plan = prog.execution_plan[0]
    ops = [o.name + (("." + o.overload) if o.overload else "") for o in plan.operators]
    n_delegate_calls = 0
    n_kernel_calls = 0
    custom_calls = 0
    for chain in plan.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            name = type(args).__name__
            if name == "DelegateCall":
                n_delegate_calls += 1
            elif name == "KernelCall":
                n_kernel_calls += 1
                if ops[args.op_index].startswith("mobilemoe::"):
                    custom_calls += 1
    return {
        "delegate_calls": n_delegate_calls,
        "backends": sorted({d.id for d in plan.delegates}),
        "kernel_calls": n_kernel_calls,
        "custom_op_calls": custom_calls,
        "operators": ops,
    }


def _fmt_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(int(n))


def _fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def whole_model_of(args) -> "bool | None":
    """``export_pte``'s ``whole_model`` for these CLI options: None = automatic (the whole decoder
    for a ``models.Transformer``), False = per-op delegates."""
    return None if not (args.per_op or args.fp32_linears or args.no_delegate) else False


def lower_like_export(model, args):
    """The module ``export_pte`` traces for these options (the lowered decoder, or ``model``), so
    that eager parity checks compare like with like."""
    from .lowering import decoder

    if whole_model_of(args) is None and decoder.is_lowerable(model):
        return decoder.lower_decoder(model, args.group_size, args.weight_bits, kv_cache=args.kv_cache)
    return model


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    hf = getattr(args, "hf", None)
    if args.out is None:
        name = args.preset or (args.module_file or args.checkpoint or hf).resolve().stem
        if args.n_layers:
            name += f"_{args.n_layers}l"
        if args.dense_baseline:
            name += f"_dense_{args.dense_baseline}"
        args.out = Path(f"{name}.pte")
    from tqdm import tqdm

    phases = ["build", "quantize", "export + lower + serialize", "summary"]
    bar = tqdm(total=len(phases), desc="mobilemoe_export", unit="phase", disable=args.no_progress,
               file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}")
    times: Dict[str, float] = {}

    def phase(i: int):
        bar.set_postfix_str(phases[i])
        return time.perf_counter()

    t = phase(0)
    model, cfg, example_args, dyn = build_from_args(args)
    mobilemoe = _mobilemoe_info(cfg) if hf is not None else None
    if mobilemoe is not None:
        hf = None  # from here on a models.Transformer like --checkpoint (the --hf extras below: mobilemoe)
    if hf is not None:
        from .sources import hf_export

        counts = hf_export.param_counts(model)
    else:
        counts = models.count_params(cfg) if cfg is not None else module_param_counts(model)
    times["build"] = time.perf_counter() - t
    bar.update(1)

    t = phase(1)
    try:
        model = quantize(model, cfg, args)
    except Exception as e:  # UnsupportedModuleError and friends: say it plainly
        bar.close()
        raise SystemExit(f"error: quantization failed: {e}")
    qbytes = quantized_weight_bytes(model)
    scale_names = scale_dtype_names(model)
    times["quantize"] = time.perf_counter() - t
    bar.update(1)

    t = phase(2)
    from .lowering.export import export_pte

    if hasattr(model, "reset_cache"):
        model.reset_cache()
    model = lower_like_export(model, args)
    with contextlib.ExitStack() as stack:
        if hf is not None:
            from .sources import hf_export

            stack.enter_context(hf_export.exportable(model.hf_config.model_type))
        export_pte(model, example_args, args.out, dynamic_shapes=dyn, delegate=not args.no_delegate,
                   dynamic_tokens=dyn is not None, whole_model=whole_model_of(args), kv_cache=args.kv_cache,
                   strict=hf is not None)
    hf_extra: Dict[str, Any] = {}
    if mobilemoe is not None:
        hf_extra = _mobilemoe_extra(args.hf, args.out, model, mobilemoe)
    if hf is not None:
        from .sources import hf_export

        hf_export.check_pte_dynamic_tokens(args.out)
        written = hf_export.write_tokenizer(hf, Path(args.out).resolve().parent)
        if not written:
            print(f"warning: {hf} has no tokenizer; none written beside {args.out}", file=sys.stderr)
        text_cfg = model.hf_config.get_text_config()
        hf_extra = {"hf_model_type": model.hf_config.model_type, "tokenizer": [Path(w).name for w in written],
                    "eos_token_ids": hf_export.eos_token_ids(model.inner.model),
                    "max_seq_len": model.max_seq_len, "vocab_size": int(text_cfg.vocab_size)}
    times["export"] = time.perf_counter() - t
    bar.update(1)

    t = phase(3)
    ps = pte_summary(args.out)
    size = os.path.getsize(args.out)
    times["summary"] = time.perf_counter() - t
    bar.update(1)
    bar.close()

    summary = {
        "out": str(args.out),
        "model": cfg.name if cfg is not None else str(args.module_file or args.checkpoint or args.hf),
        "config": cfg.to_dict() if cfg is not None else None,
        "params_total": counts["total"],
        "params_active_per_token": counts["active"],
        "quantized_weight_bytes": qbytes,
        "quantized_linears": not args.fp32_linears,
        "weight_bits": args.weight_bits,
        "group_size": args.group_size,
        "pte_bytes": size,
        "delegated": not args.no_delegate,
        "delegate_calls": ps["delegate_calls"],
        "backends": ps["backends"],
        "custom_op_calls": ps["custom_op_calls"],
        "kernel_calls": ps["kernel_calls"],
        "max_seq_len": cfg.max_seq_len if cfg is not None else None,
        "vocab_size": cfg.vocab_size if cfg is not None else None,
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }
    summary.update(hf_extra)
    sidecar = Path(str(args.out) + ".json")
    sidecar.write_text(json.dumps(summary, indent=1))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=1))

    print(f"wrote {args.out}")
    print(f"  model                  {summary['model']}"
          + (f" (D={cfg.dim}, layers={cfg.n_layers}, vocab={cfg.vocab_size}, max_seq_len={cfg.max_seq_len})" if cfg else ""))
    if cfg is not None and cfg.ffn == "moe":
        print(f"  experts                {cfg.num_experts} x F={cfg.expert_hidden_dim}, top-{cfg.top_k}, "
              f"shared F={cfg.shared_hidden_dim}")
    elif cfg is not None:
        print(f"  dense FFN              F={cfg.dense_hidden_dim}")
    if mobilemoe is not None:
        print(f"  MobileMoE release      {summary['mobilemoe_format']}: {summary['quantization']}")
        print(f"  eos token ids          {summary['eos_token_ids']}; tokenizer: "
              f"{', '.join(summary['tokenizer']) or 'none'}")
    print(f"  params (total)         {_fmt_count(counts['total'])}")
    print(f"  params active / token  {_fmt_count(counts['active'])}")
    print(f"  INT{args.weight_bits} weight bytes      {_fmt_bytes(qbytes)} (group {args.group_size}, {scale_names} scales; "
          f"{'FFNs only' if args.fp32_linears else 'FFNs + attention + LM head'})")
    print(f"  .pte size              {_fmt_bytes(size)}")
    if args.no_delegate:
        print(f"  custom-op calls        {ps['custom_op_calls']} (not delegated)")
    else:
        print(f"  delegated calls        {ps['delegate_calls']} -> {', '.join(ps['backends']) or '-'}"
              f" (+ {ps['custom_op_calls']} custom-op calls)")
    print(f"  other kernel calls     {ps['kernel_calls'] - ps['custom_op_calls']}")
    print("  time                   " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
