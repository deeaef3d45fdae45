"""torch.export -> .pte (delegated and not) -> ExecuTorch runtime."""

import struct
import sys
from pathlib import Path

import pytest
import torch

import blocks
import mobilemoe_export as mm
from mobilemoe_export.lowering import backend
from test_transforms import D, E, F, K, et_block, own_block

PKG = Path(mm.__file__).resolve().parent
sys.path.insert(0, str(PKG / "lowering" / "_fbs"))  # generated reader code uses absolute imports


def _parse_blob(blob: bytes):
    from mobilemoe.blob.Graph import Graph

    assert blob[:4] == b"MMOE"
    ver, fb_off, fb_size, data_off = struct.unpack("<IQQQ", blob[4:32])
    assert ver == backend.FORMAT_VERSION == 5 and fb_off == 32 and data_off % 64 == 0 and data_off >= 32 + fb_size
    g = Graph.GetRootAs(blob[fb_off:fb_off + fb_size], 0)
    assert Graph.GraphBufferHasIdentifier(blob[fb_off:fb_off + fb_size], 0)
    return g, data_off


def _lowered_blobs(ep_or_manager):
    out = []
    for _, mod in ep_or_manager.exported_program().graph_module.named_modules():
        if hasattr(mod, "processed_bytes") and mod.backend_id == "MobileMoEBackend":
            out.append(mod.processed_bytes)
    return out


def test_blob_contents():
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from mobilemoe_export.lowering.backend import MobileMoEPartitioner

    block = own_block("sigmoid", route_scale=2.0)
    model = torch.nn.Sequential(block, torch.nn.Linear(D, 32))
    mm.quantize_moe(model, dense_linears=True)
    x = torch.randn(1, 4, D)
    ep = torch.export.export(model, (x,), dynamic_shapes=({1: torch.export.Dim("t", max=64)},), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[MobileMoEPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    blobs = _lowered_blobs(edge)
    assert len(blobs) == 2
    g, data_off = _parse_blob(blobs[0])
    assert g.Version() == 5 and g.NodesLength() == 1 and g.InputsLength() == 1 and g.OutputsLength() == 1
    from mobilemoe.blob.MoeFfn import MoeFfn
    from mobilemoe.blob.Op import Op

    node = g.Nodes(0)
    assert node.OpType() == Op.MoeFfn
    op = MoeFfn()
    tab = node.Op()
    op.Init(tab.Bytes, tab.Pos)
    q = model[0]
    assert (op.NumExperts(), op.TopK(), op.Dim(), op.HiddenDim()) == (E, K, D, F)
    assert op.ScoreFunc() == 2 and op.RouteScale() == 2.0 and op.Renormalize() and op.SharedHiddenDim() == F
    x_t = g.Tensors(op.X())
    assert x_t.Segment() == -1 and x_t.DynamicLeading() and x_t.Shape(x_t.ShapeLength() - 1) == D
    assert g.Inputs(0) == op.X() and g.Outputs(0) == op.Out()
    for fid, buf in [(op.W13(), q.w13), (op.W2Scales(), q.w2_scales), (op.RouterWeight(), q.router_weight),
                     (op.ExpertBias(), q.expert_bias), (op.SharedGate(), q.shared_gate),
                     (op.SharedW2(), q.shared_w2)]:
        t = g.Tensors(fid)
        seg = g.Segments(t.Segment())
        assert seg.Offset() % 64 == 0
        raw = blobs[0][data_off + seg.Offset(): data_off + seg.Offset() + seg.Size()]
        assert raw == buf.contiguous().view(torch.uint8).numpy().tobytes()
        assert [t.Shape(i) for i in range(t.ShapeLength())] == list(buf.shape)
    g2, _ = _parse_blob(blobs[1])
    assert g2.Nodes(0).OpType() == Op.Int4Linear


def _run_pte(path, x):
    from executorch.runtime import Runtime

    mm.load_runtime()
    rt = Runtime.get()
    prog = rt.load_program(path)
    meth = prog.load_method("forward")
    return meth.execute([x])[0]


EXPORT_CASES = {
    "own_softmax": lambda: own_block("softmax"),
    "own_softmax_all": lambda: own_block("softmax_all", gate=False),
    "own_sigmoid": lambda: own_block("sigmoid", route_scale=2.5),
    "et_sigmoid": lambda: et_block("sigmoid", bias=True, shared=True),
    "hf_qwen": lambda: blocks.QwenMoeBlock(D, F, E, K, norm_topk_prob=True),
    "hf_deepseek": lambda: blocks.DeepseekMoE(D, F, E, K),
}


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_and_run(case, delegate, tmp_path):
    model = blocks.Wrapper(EXPORT_CASES[case]().eval(), D)
    x = torch.randn(1, 5, D)
    with torch.no_grad():
        fp32 = model(x)
        mm.quantize_moe(model, dense_linears=(case == "own_softmax"))
        eager = model(x)
    path = mm.export_pte(model, (x,), tmp_path / f"{case}.pte", delegate=delegate, max_tokens=32)
    assert Path(path).stat().st_size > 0
    if not mm.operators._lib.lib_available():
        pytest.skip("libmobilemoe_executorch.so not built: runtime part skipped")
    for t in (5, 1, 17):  # dynamic token count
        xt = torch.randn(1, t, D)
        with torch.no_grad():
            ref = model(xt)
        y = _run_pte(path, xt)
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert (eager - fp32).abs().max() < 0.25 * fp32.abs().max() + 1e-2


def test_dynamic_shape_inference():
    from mobilemoe_export.lowering.export import infer_dynamic_shapes

    tok = torch.zeros(1, 7, dtype=torch.long)
    pos = torch.tensor([0])
    ds = infer_dynamic_shapes((tok, pos))
    assert list(ds[0]) == [1] and ds[1] is None
    ds = infer_dynamic_shapes((torch.randn(6, 8), torch.arange(6)))
    assert list(ds[0]) == [0] and list(ds[1]) == [0]


class TokenModel(torch.nn.Module):
    """(tokens [1, S] int64, input_pos [1]) like the models engineer's models."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, D)
        self.moe = own_block("softmax")
        self.out = torch.nn.Linear(D, 50, bias=False)

    def forward(self, tokens, input_pos):
        h = self.emb(tokens) + input_pos.to(torch.float32).reshape(1, 1, 1)
        return self.out(self.moe(h))


@pytest.mark.parametrize("delegate", [True, False])
def test_token_model(delegate, tmp_path):
    model = TokenModel().eval()
    mm.quantize_moe(model)
    tok = torch.randint(0, 50, (1, 6))
    pos = torch.tensor([0])
    path = mm.export_pte(model, (tok, pos), tmp_path / "tok.pte", delegate=delegate, max_tokens=16)
    if not mm.operators._lib.lib_available():
        pytest.skip("libmobilemoe_executorch.so not built: runtime part skipped")
    from executorch.runtime import Runtime

    mm.load_runtime()
    meth = Runtime.get().load_program(path).load_method("forward")
    for s in (6, 1, 3):
        t = torch.randint(0, 50, (1, s))
        y = meth.execute([t, torch.tensor([2])])[0]
        with torch.no_grad():
            torch.testing.assert_close(y, model(t, torch.tensor([2])), atol=1e-5, rtol=1e-5)


class NewEmptyConcat(torch.nn.Module):
    """Concatenation by slice writes into a ``new_empty`` buffer, as transformers' MLA attention builds
    its keys (DeepSeek-V2/V3 ``expand_kv``)."""

    def forward(self, x):
        d = x.shape[-1]
        out = x.new_empty(*x.shape[:-1], 2 * d)
        out[..., :d].copy_(x)
        out[..., d:].copy_(2 * x)
        return out


def test_new_empty_keeps_the_token_dim_dynamic(tmp_path, monkeypatch):
    """ExecuTorch's dim-order pass makes a symbolic ``empty`` size static (its schema is ``int[] size``)
    and with it every tensor of the program: export_pte zero-fills such allocations instead, so the
    .pte runs at other token counts; without that rewrite the specialisation is an export error, not
    a .pte that fails at run time ("Attempted to resize a static tensor")."""
    from executorch.runtime import Runtime

    from mobilemoe_export.lowering import export as export_mod

    model = NewEmptyConcat()
    path = mm.export_pte(model, (torch.randn(1, 4, 8),), tmp_path / "ne.pte", max_tokens=16)
    meth = Runtime.get().load_program(path).load_method("forward")
    for s in (4, 7, 1):
        x = torch.randn(1, s, 8)
        torch.testing.assert_close(meth.execute([x])[0], torch.cat([x, 2 * x], -1), rtol=0, atol=0)
    monkeypatch.setattr(export_mod, "_EMPTY_TO_ZEROS", {})
    with pytest.raises(RuntimeError, match=r"dimension 1 of input 0 \(x\) was requested dynamic .* specialised it to 4"):
        mm.export_pte(model, (torch.randn(1, 4, 8),), tmp_path / "static.pte", max_tokens=16)
    assert not (tmp_path / "static.pte").exists()


class ComplexRotary(torch.nn.Module):
    """A rotary embedding in complex arithmetic (torch.polar + view_as_complex), as Meta's Llama code."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        q = torch.view_as_complex(self.proj(x).reshape(*x.shape[:-1], -1, 2))
        angles = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * torch.ones(4)
        return torch.view_as_real(q * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def test_complex_tensors_are_refused_with_the_cause(tmp_path):
    with pytest.raises(ValueError, match=r"ComplexRotary computes with complex tensors \(aten\.view_as_complex.*"
                                         r"test_export\.py.*deepseek_v2, llama4_text.*\(cos, sin\) pairs"):
        mm.export_pte(ComplexRotary(), (torch.randn(1, 4, 8),), tmp_path / "c.pte")
    assert not (tmp_path / "c.pte").exists()
