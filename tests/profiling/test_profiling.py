"""End-to-end profiling checks on a two-MoE-layer program lowered to MobileMoEBackend
(docs/profiling.md):

* ETDump: the delegate logs its phases into ExecuTorch's EventTracer; executorch.devtools.Inspector
  shows route ... scatter (per layer) as delegated events inside each DELEGATE_CALL.
* `mobilemoe bench --trace --stats-json`: the .pftrace parses with Perfetto's own full trace proto
  (the `perfetto` Python package, if installed) without unknown fields, slices nest per thread;
  scripts/plot_stats.py turns the JSON into a PNG.
"""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REL = Path(os.environ.get("MOBILEMOE_LIB", REPO / "target/release/libmobilemoe_executorch.so")).parent
LIB = REL / "libmobilemoe_executorch.so"
CLI = REL / "mobilemoe"
PHASES = ["route", "permute", "quantize", "gate_up", "act", "down", "scatter"]

pytestmark = pytest.mark.skipif(not LIB.exists(), reason=f"{LIB} not built (run `make build`)")


@pytest.fixture(scope="module")
def pte(tmp_path_factory):
    ctypes.CDLL(str(LIB), mode=ctypes.RTLD_GLOBAL)
    import torch

    sys.path.insert(0, str(REPO / "python_export"))
    import mobilemoe_export as mm

    D, F, E, K = 64, 32, 4, 2
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = mm.MoEFeedForward(D, F, E, K, score_func="softmax", renormalize=True)
            self.b = mm.MoEFeedForward(D, F, E, K, score_func="sigmoid", renormalize=True, shared_hidden_dim=F)

        def forward(self, x):
            return self.b(self.a(x))

    model = Model().eval()
    mm.quantize_moe(model)
    out = tmp_path_factory.mktemp("prof") / "two_layers.pte"
    return mm.export_pte(model, (torch.randn(1, 3, D),), out, delegate=True, max_tokens=16)


def test_etdump_has_delegate_phases(pte, tmp_path):
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    m = _load_for_executorch(str(pte), enable_etdump=True)
    runs = 3
    for t in (1, 3, 2):
        m.forward((torch.randn(1, t, 64),))
    etdump = tmp_path / "run.etdp"
    m.write_etdump_result_to_file(str(etdump))
    assert etdump.stat().st_size > 0

    ins = Inspector(etdump_path=str(etdump))
    delegated, calls = {}, []
    for eb in ins.event_blocks:
        for e in eb.events:
            if e.name == "DELEGATE_CALL":
                calls.append(e)
            if e.is_delegated_op:
                assert e.delegate_debug_identifier == e.name
                assert e.perf_data is not None and len(e.perf_data.raw) == runs
                assert all(v >= 0 for v in e.perf_data.raw)
                delegated.setdefault(e.name, []).append(e)
    # Each phase once per MoE layer (two layers), plus the moe_ffn and layer spans.
    for p in PHASES + ["moe_ffn", "layer"]:
        assert len(delegated.get(p, [])) == 2, (p, sorted(delegated))
    assert len(calls) == 2
    for i in range(2):
        moe = delegated["moe_ffn"][i].perf_data.raw
        call = calls[i].perf_data.raw
        # Same clock: the op fits inside its delegate call (ms; allow rounding).
        assert all(a <= b * 1.001 + 1e-3 for a, b in zip(moe, call)), (moe, call)
        parts = sum(sum(delegated[p][i].perf_data.raw) for p in PHASES)
        assert parts <= sum(moe) * 1.001 + 1e-3


@pytest.fixture(scope="module")
def bench(pte, tmp_path_factory):
    if not CLI.exists():
        pytest.skip(f"{CLI} not built")
    d = tmp_path_factory.mktemp("bench")
    trace, stats = d / "b.pftrace", d / "s.json"
    r = subprocess.run(
        [str(CLI), "bench", str(pte), "--tokens", "1,3", "--iters", "2", "--warmup", "1",
         "--trace", str(trace), "--stats", "--stats-json", str(stats)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Expert load per layer" in r.stderr and "gate_up" in r.stderr, r.stderr
    return trace, stats


def test_cli_stats_and_plot(bench, tmp_path):
    _, stats = bench
    png = tmp_path / "s.png"
    st = json.loads(stats.read_text())
    assert [l["layer"] for l in st["layers"]] == [0, 1]
    assert [l["layer"] for l in st["routing"]] == [0, 1]
    for l in st["layers"]:
        assert set(PHASES) <= set(l["phase_ns"]) and l["calls"] == 2 * (2 + 1)
    for l in st["routing"]:
        # (warm-up + iters) x (1 + 3 tokens) x top-2
        assert sum(l["tokens_per_expert"]) == 3 * (1 + 3) * 2

    r = subprocess.run([sys.executable, str(REPO / "scripts/plot_stats.py"), str(stats), str(png)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_cli_trace_parses_with_perfettos_own_proto(bench):
    trace, _ = bench
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
        from google.protobuf import unknown_fields
    except ImportError:
        pytest.skip("the `perfetto` Python package (Perfetto's own trace protos) is not installed")
    t = pb.Trace()
    t.ParseFromString(trace.read_bytes())

    def n_unknown(m):
        n = len(unknown_fields.UnknownFieldSet(m))
        for fd, v in m.ListFields():
            if fd.message_type is not None:
                n += sum(n_unknown(x) for x in v) if fd.is_repeated else n_unknown(v)
        return n

    assert n_unknown(t) == 0
    threads = {p.track_descriptor.uuid: p.track_descriptor.thread.tid
               for p in t.packet if p.HasField("track_descriptor") and p.track_descriptor.HasField("thread")}
    names, stack, seen = {}, {}, []
    for p in t.packet:
        for n in p.interned_data.event_names:
            names[(p.trusted_packet_sequence_id, n.iid)] = n.name
        if not p.HasField("track_event"):
            continue
        te = p.track_event
        assert te.track_uuid in threads
        s = stack.setdefault(te.track_uuid, [])
        if te.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            name = names[(p.trusted_packet_sequence_id, te.name_iid)]
            s.append(name)
            seen.append((len(s) - 1, name))
        else:
            assert te.type == pb.TrackEvent.TYPE_SLICE_END and s
            s.pop()
    assert all(not s for s in stack.values())
    depth = {n: d for d, n in seen}
    assert depth["execute"] == 0 and depth["layer"] == 1 and depth["moe_ffn"] == 2
    assert all(depth[p] == 3 for p in PHASES)
