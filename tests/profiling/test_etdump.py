"""ETDump: the MobileMoE delegate logs its phases (route ... scatter, per layer) into ExecuTorch's
EventTracer, and executorch.devtools.Inspector shows them as delegated events inside the
DELEGATE_CALL of each MoE layer (docs/profiling.md)."""

import ctypes
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = Path(os.environ.get("MOBILEMOE_LIB", REPO / "target/release/libmobilemoe_executorch.so"))
PHASES = ["route", "permute", "quantize", "gate_up", "act", "down", "scatter"]

pytestmark = pytest.mark.skipif(not LIB.exists(), reason=f"{LIB} not built (run `make build`)")


def test_etdump_has_delegate_phases(tmp_path):
    ctypes.CDLL(str(LIB), mode=ctypes.RTLD_GLOBAL)
    import torch

    sys.path.insert(0, str(REPO / "python_export"))
    import mobilemoe_export as mm
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

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
    pte = mm.export_pte(model, (torch.randn(1, 3, D),), tmp_path / "two_layers.pte", delegate=True, max_tokens=16)

    m = _load_for_executorch(str(pte), enable_etdump=True)
    runs = 3
    for t in (1, 3, 2):
        m.forward((torch.randn(1, t, D),))
    etdump = tmp_path / "run.etdp"
    m.write_etdump_result_to_file(str(etdump))
    assert etdump.stat().st_size > 0

    ins = Inspector(etdump_path=str(etdump))
    names = []
    delegate_calls = []
    for eb in ins.event_blocks:
        for e in eb.events:
            if e.name == "DELEGATE_CALL":
                delegate_calls.append(e)
            if e.is_delegated_op:
                names.append(e.name)
                assert e.delegate_debug_identifier == e.name
                assert e.perf_data is not None and len(e.perf_data.raw) == runs
                assert all(v >= 0 for v in e.perf_data.raw)
    # Each phase appears once per MoE layer (two layers), plus moe_ffn and layer spans.
    for p in PHASES + ["moe_ffn", "layer"]:
        assert names.count(p) == 2, (p, names)
    assert len(delegate_calls) == 2
    # The phases of a call fit inside its delegate call (same clock, ms).
    by_name = {}
    for eb in ins.event_blocks:
        for e in eb.events:
            if e.is_delegated_op:
                by_name.setdefault(e.name, []).append(e)
    for i in range(2):
        moe = by_name["moe_ffn"][i].perf_data.raw
        call = delegate_calls[i].perf_data.raw
        assert all(a <= b * 1.001 + 1e-3 for a, b in zip(moe, call)), (moe, call)
        parts = [sum(by_name[p][i].perf_data.raw) for p in PHASES]
        assert sum(parts) <= sum(moe) * 1.001 + 1e-3
