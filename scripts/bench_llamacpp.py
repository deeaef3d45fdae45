#!/usr/bin/env python3
"""llama.cpp on a model of the MobileMoE-S shape (random weights), measured on this machine: the
reproducible comparison anchor for the README's comparison against llama.cpp.

    .venv/bin/python scripts/bench_llamacpp.py                 # full S shape (20 layers), Q4_0 + Q4_K_M
    .venv/bin/python scripts/bench_llamacpp.py --quick         # 2-layer smoke run
    .venv/bin/python scripts/bench_llamacpp.py --quants Q4_0 --json-out runs/llamacpp.json

What it does (everything downloaded, built or generated goes to --cache-dir, default
~/.cache/mobilemoe/llamacpp, never into the repository):

1. llama.cpp source: ``pip download --no-binary llama-cpp-python --no-deps
   llama-cpp-python==<PINNED>`` (the PyPI sdist vendors llama.cpp under ``vendor/llama.cpp``),
   unpacked in the cache. Or your own checkout (``--llama-cpp-dir``) or your own binaries
   (``--llama-bench``, ``--llama-quantize``).
2. Builds ``llama-bench`` and ``llama-quantize`` once (cached, keyed by the cmake options) with the
   cmake of this venv (``pip install cmake`` if missing): Release, CPU only, static, GGML_NATIVE=ON
   (-march=native) with AMX forced off (GGML_AMX_TILE/INT8/BF16=OFF, which only act when
   GGML_NATIVE=OFF, plus ``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`` so that -march=native
   cannot turn AMX on: some VMs report AMX in CPUID, but AMX instructions trap with SIGILL).
3. Writes a GGUF with seeded random weights (``gguf`` PyPI package, installed if missing), tensor
   by tensor (never the whole model in memory): architecture ``deepseek`` (llama.cpp's
   DeepSeek-V1/MoE-16B graph: softmax gating over routed experts + always-on shared experts, SwiGLU,
   RMSNorm, GQA, RoPE), the S preset's shape (read from ``models.PRESETS["S"]``): D=768, 20 layers,
   12 heads / 4 KV heads of 64, vocabulary 128256, 60 experts x F=384, top-4, shared expert F=1536
   (llama.cpp's deepseek sizes the shared expert as n_expert_shared x expert_ff_length: 4 x 384), no
   leading dense block, RoPE theta 500000, RMS eps 1e-5, tied embeddings (no ``output.weight``);
   not S's sigmoid routing, QK-norm or llama3 RoPE scaling (deepseek's graph), tokenizer model
   "none" with ``deepseek.vocab_size``. Stored F16 (norms and router F32), then quantized with
   ``llama-quantize`` to each of --quants (default Q4_0 and Q4_K_M; llama-quantize's default
   mixes: the tied embedding / LM head becomes Q6_K, the router stays F32).
4. Runs ``llama-bench`` per quant: -t THREADS, -p 128 (prefill of a 128-token prompt, one batch),
   -n 64 (64 decode steps), at each depth of --depths (tokens already in the KV cache; default
   128,1024), -r REPS, ``-lm none`` (weights read into memory, no mmap: the peak RSS then counts
   them; ``-mmp 0`` on older builds), JSON output; records each process' peak RSS (wait4).
5. Prints a markdown table (model, quant, test, tok/s, ...) and writes all raw numbers with
   --json-out (and the table with --markdown-out).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import cpu_model, export_preset, loadavg, run_measured  # noqa: E402

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # vendors ggml-org/llama.cpp@0c1e57098 (its CHANGELOG)
SDIST_SHA256 = {"0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"}
GGUF_VERSION = "0.19.0"
CMAKE_PIP_SPEC = "cmake>=3.21"

def s_shape() -> dict:
    """The shape of the MobileMoE-S preset (python_export/mobilemoe_export/models.py, PRESETS["S"]),
    read from the preset (imports torch, only when called: ``cpu_model`` stays importable without)."""
    sys.path.insert(0, str(REPO / "python_export"))
    from mobilemoe_export.models import get_config

    c = get_config("S")
    return dict(
        n_layers=c.n_layers, dim=c.dim, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
        vocab_size=c.vocab_size, num_experts=c.num_experts, top_k=c.top_k, expert_hidden_dim=c.expert_hidden_dim,
        shared_hidden_dim=c.shared_hidden_dim, rope_theta=c.rope_theta, norm_eps=c.norm_eps,
        tie_embeddings=c.tie_embeddings, context_length=c.max_seq_len,
    )

NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def cmake_options(native: bool) -> list[str]:
    opts = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
        "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
        f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}",
        "-DGGML_CUDA=OFF", "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF", "-DGGML_BLAS=OFF",
        "-DGGML_OPENMP=ON", "-DGGML_CCACHE=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
    ]
    return opts


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench_llamacpp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], *, nice: int = 0, cwd: Path | None = None, log_file: Path | None = None) -> None:
    full = (["nice", "-n", str(nice)] if nice and shutil.which("nice") else []) + [str(c) for c in cmd]
    log("$ " + " ".join(shlex.quote(c) for c in full))
    if log_file is None:
        subprocess.run(full, cwd=cwd, check=True)
        return
    with open(log_file, "w") as f:
        r = subprocess.run(full, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"command failed ({r.returncode}); full log: {log_file}")


def pip_install(spec: str) -> None:
    run([sys.executable, "-m", "pip", "install", "-q", spec])


def ensure_cmake() -> str:
    venv_cmake = Path(sys.executable).parent / "cmake"
    if venv_cmake.exists():
        return str(venv_cmake)
    found = shutil.which("cmake")
    if found:
        return found
    log("cmake not found: installing it into this Python environment with pip")
    pip_install(CMAKE_PIP_SPEC)
    if venv_cmake.exists():
        return str(venv_cmake)
    found = shutil.which("cmake")
    if not found:
        raise SystemExit("pip installed cmake but no cmake executable was found")
    return found


def ensure_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        log(f"the gguf package is missing: pip install gguf=={GGUF_VERSION}")
        pip_install(f"gguf=={GGUF_VERSION}")
    import gguf
    return gguf


# --------------------------------------------------------------------------------------------
# 1. source
# --------------------------------------------------------------------------------------------
def fetch_source(cache: Path, version: str) -> Path:
    src_root = cache / f"llama_cpp_python-{version}"
    vendor = src_root / "vendor" / "llama.cpp"
    if (vendor / "CMakeLists.txt").exists():
        log(f"source cached: {vendor}")
        return vendor
    sdist = cache / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        # --no-binary only for llama-cpp-python: with ":all:" pip also builds the sdist's build
        # dependencies (cmake, ninja) from source to prepare its metadata, which takes long.
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={version}", "-d", str(cache)])
    if not sdist.exists():
        cands = sorted(cache.glob(f"llama_cpp_python-{version}*.tar.gz"))
        if not cands:
            raise SystemExit(f"pip download did not produce {sdist}")
        sdist = cands[0]
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if version in SDIST_SHA256 and digest != SDIST_SHA256[version]:
        raise SystemExit(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256[version]}: delete it and retry")
    log(f"unpacking {sdist.name} (sha256 {digest[:16]}...)")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix="unpack-"))
    with tarfile.open(sdist) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(tmp, filter="data")
        else:  # pragma: no cover (Python < 3.11.4)
            tf.extractall(tmp)
    inner = next(tmp.iterdir())
    if src_root.exists():
        shutil.rmtree(src_root)
    inner.rename(src_root)
    shutil.rmtree(tmp, ignore_errors=True)
    if not (vendor / "CMakeLists.txt").exists():
        raise SystemExit(f"{sdist.name} has no vendor/llama.cpp/CMakeLists.txt")
    return vendor


# --------------------------------------------------------------------------------------------
# 2. build
# --------------------------------------------------------------------------------------------
def build(src: Path, build_dir: Path, cmake: str, jobs: int, nice: int, native: bool) -> tuple[Path, Path, dict]:
    opts = cmake_options(native)
    stamp = build_dir / "mobilemoe_build.json"
    bench = build_dir / "bin" / "llama-bench"
    quant = build_dir / "bin" / "llama-quantize"
    want = {"source": str(src.resolve()), "cmake_options": opts}
    if bench.exists() and quant.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("cmake_options") == opts:
                log(f"build cached: {build_dir}")
                return bench, quant, json.loads(stamp.read_text())
        except json.JSONDecodeError:
            pass
    build_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run([cmake, "-S", src, "-B", build_dir, *opts], nice=nice, log_file=build_dir / "configure.log")
    run([cmake, "--build", build_dir, "--target", "llama-bench", "llama-quantize", "-j", str(jobs)],
        nice=nice, log_file=build_dir / "build.log")
    want["build_seconds"] = round(time.time() - t0, 1)
    want["built_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    stamp.write_text(json.dumps(want, indent=1))
    log(f"built llama-bench + llama-quantize in {want['build_seconds']} s")
    return bench, quant, want


def bench_features(bench: Path) -> dict:
    """What this llama-bench accepts (older builds lack --n-depth and --load-mode)."""
    r = subprocess.run([str(bench), "--help"], capture_output=True, text=True)
    h = r.stdout + r.stderr
    if r.returncode < 0:
        raise SystemExit(f"{bench} --help died with signal {-r.returncode}")
    v = subprocess.run([str(bench), "--version"], capture_output=True, text=True)
    return {
        "depth": "--n-depth" in h,
        "load_mode": "--load-mode" in h,
        "mmap_flag": "--mmap" in h,
        "version": (v.stdout + v.stderr).strip().splitlines()[:2] if v.returncode == 0 else None,
    }


# --------------------------------------------------------------------------------------------
# 3. GGUF with random weights
# --------------------------------------------------------------------------------------------
def shape_tag(shape: dict, seed: int) -> str:
    h = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    return f"mobilemoe-S-L{shape['n_layers']}-{h}-seed{seed}"


def write_gguf(path: Path, shape: dict, seed: int) -> None:
    gguf = ensure_gguf()
    import numpy as np

    D, L, H, Hkv, hd = shape["dim"], shape["n_layers"], shape["n_heads"], shape["n_kv_heads"], shape["head_dim"]
    V, E, K, F, Fs = (shape["vocab_size"], shape["num_experts"], shape["top_k"],
                      shape["expert_hidden_dim"], shape["shared_hidden_dim"])
    if H * hd != D:
        raise SystemExit("llama.cpp's deepseek graph needs n_heads x head_dim == dim")
    if Fs % F:
        raise SystemExit("llama.cpp's deepseek sizes the shared expert as n_expert_shared x expert F")
    n_shared = Fs // F

    # (name, numpy shape = reversed ggml ne, dtype, init): F16 matrices, F32 norms and router.
    tensors: list[tuple[str, tuple[int, ...], type, str]] = [("token_embd.weight", (V, D), np.float16, "w")]
    for i in range(L):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (D,), np.float32, "one"),
            (b + "attn_q.weight", (H * hd, D), np.float16, "w"),
            (b + "attn_k.weight", (Hkv * hd, D), np.float16, "w"),
            (b + "attn_v.weight", (Hkv * hd, D), np.float16, "w"),
            (b + "attn_output.weight", (D, H * hd), np.float16, "w"),
            (b + "ffn_norm.weight", (D,), np.float32, "one"),
            (b + "ffn_gate_inp.weight", (E, D), np.float32, "w"),
            (b + "ffn_gate_exps.weight", (E, F, D), np.float16, "w"),
            (b + "ffn_up_exps.weight", (E, F, D), np.float16, "w"),
            (b + "ffn_down_exps.weight", (E, D, F), np.float16, "w"),
            (b + "ffn_gate_shexp.weight", (Fs, D), np.float16, "w"),
            (b + "ffn_up_shexp.weight", (Fs, D), np.float16, "w"),
            (b + "ffn_down_shexp.weight", (D, Fs), np.float16, "w"),
        ]
    tensors.append(("output_norm.weight", (D,), np.float32, "one"))
    if not shape["tie_embeddings"]:
        tensors.append(("output.weight", (V, D), np.float16, "w"))

    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "deepseek")
    w.add_name(f"MobileMoE-S shape, random weights ({L} layers)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(shape["context_length"])
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(Fs)  # only used by leading dense blocks (none here)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_layer_norm_rms_eps(shape["norm_eps"])
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    w.add_expert_feed_forward_length(F)
    w.add_expert_shared_count(n_shared)
    w.add_expert_weights_scale(1.0)
    w.add_leading_dense_block_count(0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("none")
    for name, shp, dt, _ in tensors:
        n = int(np.prod(shp))
        w.add_tensor_info(name, shp, np.dtype(dt), n * np.dtype(dt).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    total = sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d, _ in tensors)
    done = 0
    t0 = time.time()
    for name, shp, dt, init in tensors:
        if init == "one":
            a = np.ones(shp, dtype=dt)
        else:
            std = 1.0 / np.sqrt(shp[-1])
            a = rng.standard_normal(shp, dtype=np.float32)
            a *= std
            a = a.astype(dt, copy=False)
        w.write_tensor_data(a)
        done += a.nbytes
        del a
        if time.time() - t0 > 10:
            log(f"  gguf {done / total:5.1%}")
            t0 = time.time()
    w.close()
    tmp.rename(path)


def param_count(shape: dict) -> int:
    D, L, H, Hkv, hd = shape["dim"], shape["n_layers"], shape["n_heads"], shape["n_kv_heads"], shape["head_dim"]
    V, E, F, Fs = shape["vocab_size"], shape["num_experts"], shape["expert_hidden_dim"], shape["shared_hidden_dim"]
    layer = 2 * D + D * (H + 2 * Hkv) * hd + H * hd * D + E * D + 3 * E * F * D + 3 * Fs * D
    return V * D * (1 if shape["tie_embeddings"] else 2) + L * layer + D


# --------------------------------------------------------------------------------------------
# 4. benchmark
# --------------------------------------------------------------------------------------------
def run_bench(bench: Path, model: Path, args, feats: dict) -> tuple[list[dict], float, str]:
    cmd = [str(bench), "-m", str(model), "-t", str(args.threads), "-p", str(args.prompt),
           "-n", str(args.gen), "-r", str(args.reps), "-o", "json"]
    if feats["depth"]:
        cmd += ["-d", args.depths]
    if not args.mmap:
        if feats["load_mode"]:
            cmd += ["-lm", "none"]
        elif feats["mmap_flag"]:
            cmd += ["-mmp", "0"]
    cmd += shlex.split(args.bench_args)
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    r = run_measured(cmd, check=False)
    stdout, stderr = r["stdout"], r["stderr"]
    if r["returncode"] != 0:
        sys.stderr.write(stderr[-4000:])
        if r["returncode"] == -4:
            raise SystemExit("llama-bench died with SIGILL: an instruction this CPU/VM does not allow "
                             "(AMX?). Rebuild with --no-native or check the -mno-amx flags.")
        raise SystemExit(f"llama-bench failed with exit code {r['returncode']}")
    try:
        rows = json.loads(stdout)
    except json.JSONDecodeError:
        sys.stderr.write(stdout[-2000:])
        raise SystemExit("could not parse llama-bench's JSON output")
    return rows, r["peak_rss_mib"], stderr


def ensure_ours(args) -> Path:
    """Our .pte of the S shape (the CLI's preset S: whole decoder, INT4 g32, fp16 scales, fp16 KV
    cache, max_seq_len 2048), exported once."""
    n_layers = args.layers if args.layers != s_shape()["n_layers"] else None
    return export_preset(args.ours, "S", max_seq_len=2048, scales="fp16", n_layers=n_layers)


def render_markdown(doc) -> str:
    """Ours against llama.cpp per quant: prefill from depth 0, decode at each depth (medians over
    rounds of llama-bench's per-run means / our per-round figures), ratio against each quant."""
    import bench_common as bc

    depths = [int(d) for d in str(doc["depths"]).split(",") if int(d) > 0]
    quants = sorted({r["quant"] for r in doc["llamacpp"]}, key=lambda q: (q != "Q4_0", q))
    p, g = doc["prompt"], doc["gen"]

    def lc(q, test):
        return [r["tok_s"] for r in doc["llamacpp"] if r["quant"] == q and r["test"] == test]

    tests = [(f"prefill tok/s, {p}-token prompt from depth 0", "prefill", f"pp{p}")]
    tests += [(f"decode tok/s at depth {d} ({g} tokens)", f"decode@{d}", f"tg{g} @ d{d}") for d in depths]
    head = f"| S shape ({doc['layers']} layers), {doc['threads']} threads | mobilemoe | " + " | ".join(
        f"llama.cpp {q}" for q in quants) + " | " + " | ".join(f"mobilemoe / {q}" for q in quants) + " |"
    out = [head, "|---" * (2 + 2 * len(quants)) + "|"]
    fmt = lambda xs: "-" if not xs else (f"{min(xs):.1f}" if f"{min(xs):.1f}" == f"{max(xs):.1f}"  # noqa: E731
                                         else f"{min(xs):.1f}-{max(xs):.1f}")
    for label, ours_key, test in tests:
        mine = [r.get(ours_key) for r in doc["ours"] if r.get(ours_key)]
        theirs = [lc(q, test) for q in quants]
        ratios = [f"**{bc.median(mine) / bc.median(t):.2f}x**" if mine and t else "-" for t in theirs]
        out.append(f"| {label} | {fmt(mine)} | " + " | ".join(fmt(t) for t in theirs) + " | " + " | ".join(ratios) + " |")
    rss_l = [max((r["peak_rss_mib"] for r in doc["llamacpp"] if r["quant"] == q), default=0) for q in quants]
    rss_o = max((r.get("peak_rss_mib", 0) for r in doc["ours"]), default=0)
    out.append(f"| peak RSS | {rss_o:.0f} MiB | " + " | ".join(f"{x:.0f} MiB" for x in rss_l) + " |" + " |" * len(quants))
    lcx = doc["llama_cpp"]
    out.append("")
    out.append(f"llama.cpp {lcx.get('build_commit')} (llama-cpp-python {lcx.get('version')} sdist, built natively), "
               f"`llama-bench -p {p} -n {g} -d {doc['depths']} -r {doc['reps']}`, weights loaded without mmap; a GGUF of "
               f"the same shape with random weights in llama.cpp's `deepseek` architecture — the closest graph it has: "
               f"softmax top-{doc['shape']['top_k']} gating over {doc['shape']['num_experts']} experts + "
               f"{doc['shape']['shared_hidden_dim'] // doc['shape']['expert_hidden_dim']} always-on shared experts of "
               f"F={doc['shape']['expert_hidden_dim']} (= our shared F={doc['shape']['shared_hidden_dim']}), no QK-norm, "
               f"half-split RoPE — against ours with sigmoid + bias routing, QK-norm and llama3 RoPE. Ours: "
               f"`mobilemoe bench` (prefill = one forward over the prompt from position 0; decode = real greedy "
               f"steps after prefilling to the depth), .pte {doc['ours_pte_bytes'] / 2**20:.0f} MiB. "
               f"{doc['rounds']} alternating rounds; ranges over rounds, ratios of the medians.")
    return "\n".join(out) + "\n"


def test_name(r: dict) -> str:
    if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) > 0:
        t = f"pp{r['n_prompt']}+tg{r['n_gen']}"
    elif r.get("n_prompt", 0) > 0:
        t = f"pp{r['n_prompt']}"
    else:
        t = f"tg{r['n_gen']}"
    if r.get("n_depth", 0):
        t += f" @ d{r['n_depth']}"
    return t


# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "mobilemoe" / "llamacpp",
                    help="where the source, the build and the GGUF files go (default: %(default)s)")
    ap.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION,
                    help="llama-cpp-python sdist version whose vendored llama.cpp is built (pinned: %(default)s)")
    ap.add_argument("--llama-cpp-dir", type=Path, help="build this llama.cpp checkout instead of the sdist's")
    ap.add_argument("--llama-bench", type=Path, help="use this llama-bench binary (no build)")
    ap.add_argument("--llama-quantize", type=Path,
                    help="use this llama-quantize binary (default: next to --llama-bench)")
    ap.add_argument("--no-native", action="store_true",
                    help="build without -march=native (ggml's portable x86 defaults: AVX2 etc.)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build jobs (default: %(default)s)")
    ap.add_argument("--nice", type=int, default=10,
                    help="nice level for the build, GGUF writing and quantization; the benchmark itself "
                         "runs at normal priority (default: %(default)s)")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the S preset's 20; 2 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    ap.add_argument("--quants", default=None,
                    help="comma-separated llama-quantize types (default: Q4_0,Q4_K_M; Q4_0 with --quick)")
    ap.add_argument("--threads", type=int, default=2, help="llama-bench -t (default: %(default)s)")
    ap.add_argument("--prompt", type=int, default=128, help="llama-bench -p: prompt tokens (default: %(default)s)")
    ap.add_argument("--gen", type=int, default=64, help="llama-bench -n: generated tokens (default: %(default)s)")
    ap.add_argument("--depths", default=None,
                    help="llama-bench -d: KV-cache depths, comma-separated (default: 128,1024; 128 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="llama-bench -r (default: 5; 2 with --quick)")
    ap.add_argument("--mmap", action="store_true",
                    help="let llama-bench mmap the weights (default: no mmap, -lm none / -mmp 0)")
    ap.add_argument("--bench-args", default="", help="extra llama-bench arguments, e.g. '-fa on'")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 layers, Q4_0, depth 128, 2 reps, -n 16")
    ap.add_argument("--rebuild", action="store_true", help="rebuild llama.cpp even if cached")
    ap.add_argument("--regen", action="store_true", help="rewrite the GGUF files even if cached")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds of llama-bench (each quant) and ours (default: %(default)s)")
    ap.add_argument("--ours", type=Path, default=REPO / "artifacts" / "bench" / "S_llamacpp_seq2048_fp16.pte",
                    help="our .pte of the same shape (exported with the CLI's preset S if missing)")
    ap.add_argument("--no-ours", action="store_true", help="llama.cpp only")
    ap.add_argument("--no-save", action="store_true", help="do not write docs/results")
    ap.add_argument("--json-out", type=Path, help="write every raw number here")
    ap.add_argument("--markdown-out", type=Path, help="write the markdown table here")
    args = ap.parse_args()

    if args.layers is None:
        args.layers = 2 if args.quick else s_shape()["n_layers"]
    if args.quants is None:
        args.quants = "Q4_0" if args.quick else "Q4_0,Q4_K_M"
    if args.depths is None:
        # depth 0 for prefill (ours prefills from position 0 too), 128 and 1024 for decode
        args.depths = "0,128" if args.quick else "0,128,1024"
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.quick and args.gen == 64:
        args.gen = 16
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]

    cache = args.cache_dir.expanduser().resolve()
    try:
        cache.relative_to(REPO)
        raise SystemExit(f"--cache-dir {cache} is inside the repository: put it outside (nothing built "
                         "or downloaded here may be committed)")
    except ValueError:
        pass
    cache.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()

    # 1 + 2: binaries
    build_info: dict = {}
    if args.llama_bench:
        bench = args.llama_bench.resolve()
        quant = (args.llama_quantize or bench.parent / "llama-quantize").resolve()
        build_info = {"user_binaries": [str(bench), str(quant)]}
    else:
        t0 = time.time()
        if args.llama_cpp_dir:
            src = args.llama_cpp_dir.resolve()
            tag = "src-" + hashlib.sha1(str(src).encode()).hexdigest()[:8]
        else:
            src = fetch_source(cache, args.version)
            tag = args.version
        timings["source_s"] = round(time.time() - t0, 1)
        build_dir = cache / f"build-{tag}{'-portable' if args.no_native else ''}"
        if args.rebuild and build_dir.exists():
            shutil.rmtree(build_dir)
        t0 = time.time()
        cmake = ensure_cmake()
        bench, quant, build_info = build(src, build_dir, cmake, args.jobs, args.nice, not args.no_native)
        build_info["llama_cpp_python_version"] = None if args.llama_cpp_dir else args.version
        timings["build_s"] = round(time.time() - t0, 1)
    for b in (bench, quant):
        if not b.exists():
            raise SystemExit(f"missing {b}")
    feats = bench_features(bench)
    log(f"llama-bench: {feats}")
    if not feats["depth"]:
        log("this llama-bench has no -d/--n-depth: tests run at depth 0")

    # 3: GGUF
    shape = dict(s_shape(), n_layers=args.layers)
    tag = shape_tag(shape, args.seed)
    f16 = cache / f"{tag}-F16.gguf"
    t0 = time.time()
    if args.regen or not f16.exists():
        log(f"writing {f16.name} ({param_count(shape) / 1e9:.3f} B parameters, random, seed {args.seed})")
        cmd = [sys.executable, __file__, "--_write-gguf", str(f16), "--layers", str(args.layers),
               "--seed", str(args.seed)]
        ensure_gguf()  # install before the niced child runs
        run(cmd, nice=args.nice)
    else:
        log(f"GGUF cached: {f16}")
    timings["gguf_f16_s"] = round(time.time() - t0, 1)
    models: dict[str, Path] = {}
    for q in quants:
        out = cache / f"{tag}-{q}.gguf"
        t0 = time.time()
        if args.regen or not out.exists():
            part = out.with_suffix(".partial")
            run([quant, f16, part, q, str(os.cpu_count() or 2)], nice=args.nice,
                log_file=cache / f"quantize-{tag}-{q}.log")
            part.rename(out)
        else:
            log(f"GGUF cached: {out}")
        timings[f"quantize_{q}_s"] = round(time.time() - t0, 1)
        models[q] = out
    timings["prepare_total_s"] = round(time.time() - t_all, 1)

    # 4: benchmark, llama.cpp and ours alternating
    ours = None if args.no_ours else ensure_ours(args)
    import bench_common as bc

    load_before = loadavg()
    bw_before = bc.bandwidth_probe(args.threads)
    results, ours_rounds = [], []
    decode_depths = [int(d) for d in args.depths.split(",") if int(d) > 0]
    for rnd in range(args.rounds):
        for q, path in models.items():
            t0 = time.time()
            rows, rss_mib, _ = run_bench(bench, path, args, feats)
            timings[f"bench_{q}_s"] = round(timings.get(f"bench_{q}_s", 0) + time.time() - t0, 1)
            for r in rows:
                results.append({
                    "round": rnd, "quant": q, "test": test_name(r), "tok_s": r.get("avg_ts"),
                    "tok_s_stdev": r.get("stddev_ts", r.get("stdev_ts")),
                    "tok_s_median": statistics.median(r["samples_ts"]) if r.get("samples_ts") else None,
                    "tok_s_best": max(r["samples_ts"]) if r.get("samples_ts") else None,
                    "samples_tok_s": r.get("samples_ts"), "peak_rss_mib": round(rss_mib, 1),
                    "model_size_bytes": r.get("model_size"), "gguf": str(path), "raw": r,
                })
        if ours is not None:
            env = dict(os.environ, MOBILEMOE_THREADS=str(args.threads))
            o = bc.run_measured([bc.RUNNER, "bench", ours, "--threads", str(args.threads), "--prefill", str(args.prompt),
                                 "--depths", ",".join(map(str, decode_depths)), "--decode-tokens", str(args.gen),
                                 "--iters", str(args.reps)], env=env)
            ours_rounds.append(bc.parse_llm_bench(o["stdout"]))
            log(f"round {rnd + 1}: ours {ours_rounds[-1]}")
    load_after = loadavg()

    # 5: report
    first = results[0]["raw"] if results else {}
    lm = "mmap" if args.mmap else "no mmap"
    title = (f"llama.cpp {first.get('build_commit', '?')} (llama-cpp-python {build_info.get('llama_cpp_python_version')}), "
             f"MobileMoE-S shape ({args.layers} layers, deepseek arch, random weights), "
             f"{args.threads} threads, {lm}, r={args.reps}; CPU: {first.get('cpu_info') or cpu_model()}; "
             f"load average before/after: {load_before} / {load_after}")
    lines = ["| model | quant | size | test | tok/s (mean ± sd) | median | best | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        size = f"{r['model_size_bytes'] / 2**20:.0f} MiB" if r["model_size_bytes"] else ""
        sd = f" ± {r['tok_s_stdev']:.2f}" if r["tok_s_stdev"] is not None else ""
        med = f"{r['tok_s_median']:.2f}" if r["tok_s_median"] is not None else ""
        best = f"{r['tok_s_best']:.2f}" if r["tok_s_best"] is not None else ""
        lines.append(f"| S shape, {args.layers} L | {r['quant']} | {size} | {r['test']} | "
                     f"{r['tok_s']:.2f}{sd} | {med} | {best} | {r['peak_rss_mib']:.0f} MiB |")
    table = "\n".join(lines)
    print()
    print(title)
    print()
    print(table)
    print()
    log("timings: " + json.dumps(timings))
    if args.markdown_out:
        args.markdown_out.write_text(title + "\n\n" + table + "\n")
    doc = {
        "renderer": "bench_llamacpp", "threads": args.threads, "prompt": args.prompt, "gen": args.gen,
        "depths": args.depths, "reps": args.reps, "rounds": args.rounds, "layers": args.layers,
        "shape": shape, "params": param_count(shape), "gguf_arch": "deepseek",
        "llama_cpp": {"build_commit": first.get("build_commit"), "version": build_info.get("llama_cpp_python_version"),
                      "features": feats, "cpu_info": first.get("cpu_info")},
        "llamacpp": [{k: v for k, v in r.items() if k != "raw"} for r in results],
        "ours": ours_rounds, "ours_pte": str(ours) if ours else None,
        "ours_pte_bytes": ours.stat().st_size if ours else None,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "machine": dict(bc.machine(), bandwidth_gbps={str(args.threads): bw_before}),
    }
    if ours is not None:
        print(render_markdown(doc))
        if not args.no_save and not args.quick:
            log(f"wrote {bc.write_results('llamacpp-vs-mobilemoe', doc)}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "when": _dt.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu_model(), "nproc": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": load_after,
            "llama_cpp": {"build": build_info, "llama_bench_features": feats,
                          "build_commit": first.get("build_commit"), "bench": str(bench)},
            "shape": shape, "params": param_count(shape), "seed": args.seed,
            "bench_args": {"threads": args.threads, "prompt": args.prompt, "gen": args.gen,
                           "depths": args.depths if feats["depth"] else "0 (unsupported)",
                           "reps": args.reps, "mmap": args.mmap, "extra": args.bench_args},
            "timings": timings, "results": results,
        }, indent=1))
        log(f"wrote {args.json_out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_write-gguf":
        # internal: the GGUF writer, run as a child so that it can be niced
        _p = argparse.ArgumentParser()
        _p.add_argument("--_write-gguf", dest="path", type=Path)
        _p.add_argument("--layers", type=int)
        _p.add_argument("--seed", type=int)
        _a = _p.parse_args()
        write_gguf(_a.path, dict(s_shape(), n_layers=_a.layers), _a.seed)
    else:
        main()
