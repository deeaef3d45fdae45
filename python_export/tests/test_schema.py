import filecmp
from pathlib import Path

import mobilemoe_export
from mobilemoe_export.operators import ops

PKG = Path(mobilemoe_export.__file__).resolve().parent
REPO = PKG.parents[1]


def test_packaged_schema_copies_are_current():
    assert (PKG / "schema" / "ops.txt").read_text() == (REPO / "schema" / "ops.txt").read_text()
    assert (PKG / "schema" / "mobilemoe.fbs").read_text() == (REPO / "schema" / "mobilemoe.fbs").read_text()


def test_generated_flatbuffers_code_is_current(tmp_path):
    from mobilemoe_export.lowering.backend import generate_fbs

    generate_fbs(tmp_path)
    gen = tmp_path / "mobilemoe" / "blob"
    for f in sorted(gen.glob("*.py")):
        assert filecmp.cmp(f, PKG / "lowering" / "_fbs" / "mobilemoe" / "blob" / f.name, shallow=False), f.name


def test_ops_defined_from_schema():
    import torch

    for name, schema in ops.read_schemas().items():
        op = getattr(torch.ops.mobilemoe, name)
        assert str(op.default._schema).startswith(f"mobilemoe::{name}(")
        assert "out" in op.overloads()
    assert ops.out_schema("f(Tensor x, int n) -> Tensor") == "f.out(Tensor x, int n, *, Tensor(a!) out) -> Tensor(a!)"
