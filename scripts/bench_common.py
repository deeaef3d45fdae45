"""What every benchmark script records beside its numbers, and where: the machine (CPU model and
flags, cores, cache sizes, a streaming-read bandwidth probe), the commit, the load average before
and after, and the raw samples, written to ``docs/results/<name>-<date>.json``. README tables are
rendered from those files by ``scripts/render_readme.py``; nothing in them is typed by hand.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "docs" / "results"
# The ISA features our kernels dispatch on (x86-64 and aarch64 spellings of /proc/cpuinfo).
KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_int8", "asimd", "asimddp", "i8mm", "fphp", "asimdhp", "sve")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    """The kernel-relevant ISA flags of this CPU (as /proc/cpuinfo lists them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in KERNEL_FLAGS if f in have]
    except OSError:
        pass
    return []


def cache_sizes() -> Dict[str, str]:
    """L1d/L2/L3 sizes of CPU 0 as sysfs reports them (e.g. ``{"L2": "512K", "L3": "32768K"}``)."""
    out: Dict[str, str] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            out[f"L{level}" + ("d" if kind == "Data" else "")] = size
    return out


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str:
    """HEAD's short hash, with ``+dirty`` when the work tree has changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bandwidth_probe(threads: int, moe_bench: Path = REPO / "target" / "release" / "moe_bench") -> Optional[float]:
    """Streaming-read bandwidth (GB/s) with ``threads`` threads, from ``moe_bench``'s roofline probe
    (a buffer of 4x the last-level cache, at least 1 GiB); None if the binary is missing."""
    if not moe_bench.is_file():
        return None
    p = subprocess.run([str(moe_bench), "--json", "--threads", str(threads), "--layers", "none"], cwd=REPO,
                       capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("kind") == "roofline" and d.get("threads") == threads:
                return round(float(d["gbps"]), 2)
    return None


def machine(threads_probed: tuple = ()) -> Dict[str, Any]:
    """The machine's facts; a bandwidth probe per thread count in ``threads_probed``."""
    facts: Dict[str, Any] = {
        "cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "caches": cache_sizes(),
        "platform": platform.platform(), "python": platform.python_version(),
    }
    if threads_probed:
        facts["bandwidth_gbps"] = {str(t): bandwidth_probe(t) for t in threads_probed}
    return facts


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def write_results(name: str, payload: Dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """``payload`` plus ``name``, date, commit and command line, as ``out_dir/<name>-<date>.json``
    (a rerun on the same day replaces that day's file)."""
    t = now_utc()
    doc = {"name": name, "date": t.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), **payload}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{t:%Y-%m-%d}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def latest_results(name: str, out_dir: Path = RESULTS_DIR) -> Optional[Path]:
    """The newest ``<name>-<date>.json`` in ``out_dir`` (dates sort as text)."""
    pat = re.compile(re.escape(name) + r"-\d{4}-\d{2}-\d{2}\.json$")
    files = sorted(p for p in out_dir.glob(f"{name}-*.json") if pat.match(p.name))
    return files[-1] if files else None


def machine_line(doc: Dict[str, Any]) -> str:
    """One line for a table caption: CPU, flags, cores, caches, bandwidth, load, date, commit."""
    m = doc.get("machine", {})
    bw = m.get("bandwidth_gbps") or {}
    bws = ", ".join(f"{v} GB/s @ {k} thread{'s' if k != '1' else ''}" for k, v in bw.items() if v)
    caches = " ".join(f"{k} {v}" for k, v in (m.get("caches") or {}).items())
    load = doc.get("loadavg_before"), doc.get("loadavg_after")
    loads = f"load {load[0][0]} before / {load[1][0]} after" if all(load) else ""
    parts = [m.get("cpu", "?"), "+".join(m.get("flags", [])) or None, f"{m.get('cores')} cores", caches or None,
             f"read bandwidth {bws}" if bws else None, loads or None, doc.get("date"), f"commit {doc.get('commit')}"]
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# Running the Rust runner
# --------------------------------------------------------------------------------------------
RUNNER = REPO / "target" / "release" / "mobilemoe"
_LLM_ROW = re.compile(r"^(prefill-\d+|decode @\d+)\s+\S+\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def run_measured(cmd, env=None, cwd=REPO, check: bool = True) -> Dict[str, Any]:
    """Run ``cmd``; its stdout, stderr, exit code, wall time (s) and the child's own peak RSS (MiB,
    from wait4: the child alone, not this process). ``check``: a failure ends the script."""
    import tempfile
    import time

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if check and p.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{out[-4000:]}\n{err[-4000:]}")
    return {"stdout": out, "stderr": err, "returncode": p.returncode, "wall_s": wall,
            "peak_rss_mib": ru.ru_maxrss / 1024}


def export_preset(out: Path, preset: str, *, extra=(), max_seq_len: int = 2048, scales: str = "fp16",
                  n_layers: Optional[int] = None, force: bool = False) -> Path:
    """``python -m mobilemoe_export --preset PRESET`` into ``out``, once: the sidecar ``out.json`` is
    written last by the exporter, so its presence marks a complete export. Records the export's wall
    time and peak RSS in the sidecar (``export_wall_s``, ``export_peak_rss_mib``)."""
    import json
    import sys

    side = Path(str(out) + ".json")
    if out.exists() and side.exists() and not force:
        print(f"[export] cached: {out}", file=sys.stderr)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [REPO / ".venv" / "bin" / "python", "-m", "mobilemoe_export", "--preset", preset, *extra,
           "--max-seq-len", str(max_seq_len), "--scales", scales, "--no-progress", "--out", out]
    if n_layers:
        cmd += ["--n-layers", str(n_layers)]
    side.unlink(missing_ok=True)
    r = run_measured(cmd)
    print(f"[export] {preset} {' '.join(extra)}: {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mib'] / 1024:.1f} GiB",
          file=sys.stderr)
    doc = json.loads(side.read_text())
    doc["export_wall_s"], doc["export_peak_rss_mib"] = round(r["wall_s"], 1), round(r["peak_rss_mib"])
    side.write_text(json.dumps(doc, indent=1))
    return out


def parse_llm_bench(out: str) -> Dict[str, float]:
    """`mobilemoe bench` (language-model mode) output -> {"prefill": tok/s, "decode@D": tok/s,
    "<key>_ms_per_token": ms, "peak_rss_mib": MiB}."""
    res: Dict[str, float] = {}
    for m in map(_LLM_ROW.match, out.splitlines()):
        if m:
            name = "prefill" if m.group(1).startswith("prefill") else "decode@" + m.group(1).split("@")[1]
            res[name] = float(m.group(5))
            res[name + "_ms_per_token"] = float(m.group(4))
    # (a run with `--depths 0` has no decode row: every depth is skipped)
    if "prefill" not in res:
        raise SystemExit(f"error: cannot parse `mobilemoe bench` output:\n{out}")
    rss = re.search(r"peak RSS: ([\d.]+) MiB", out)
    res["peak_rss_mib"] = float(rss.group(1)) if rss else float("nan")
    return res


def parse_generate(out: str, err: str = "") -> Dict[str, float]:
    """`mobilemoe generate` statistics: TTFT, prefill / decode tok/s, peak RSS, program load (ms)."""
    res: Dict[str, float] = {}
    for key, pat in (("ttft_ms", r"TTFT: ([\d.]+) ms"), ("prefill_tok_s", r"prefill: ([\d.]+) tok/s"),
                     ("decode_tok_s", r"decode: ([\d.]+) tok/s"), ("peak_rss_mib", r"peak RSS: ([\d.]+) MiB"),
                     ("load_ms", r"program load: ([\d.]+) ms")):
        m = re.search(pat, out + "\n" + err)
        if m:
            res[key] = float(m.group(1))
    return res


def median(xs):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
