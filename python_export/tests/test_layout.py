"""The package's rooms (sources/, quantization/, operators/, lowering/, training/) and the old flat
module names: every moved module still imports under its old name as the SAME module object, the
``python -m`` entry points documented anywhere in the repository run, ``import mobilemoe_export``
stays lazy, and no module file exists twice."""

import importlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import mobilemoe_export as mm

ROOT = Path(__file__).resolve().parents[1]  # python_export/
REPO = ROOT.parent
PKG = Path(mm.__file__).resolve().parent

# old flat name -> the room it lives in now
MOVED = {
    "_lib": "operators",
    "ops": "operators",
    "decoder_ops": "operators",
    "reference": "operators",
    "quant": "quantization",
    "qat": "quantization",
    "torchao_layout": "quantization",
    "transforms": "quantization",
    "decoder": "lowering",
    "backend": "lowering",
    "export": "lowering",
    "train": "training",
    "train_data": "training",
    "hf_families": "sources",
    "hf_export": "sources",
}
# modules that stay directly in the package
TOP_LEVEL = ["cli", "generate", "parity", "models", "moe_block", "_pytest_no_skip", "_paths", "_moved"]
# every `python -m` entry point (the test below checks that this covers all the documented ones)
ENTRY_POINTS = ["mobilemoe_export", "mobilemoe_export.cli", "mobilemoe_export.generate", "mobilemoe_export.parity",
                "mobilemoe_export.train", "mobilemoe_export.training.train", "mobilemoe_export.backend"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_moved_table_is_the_packages():
    from mobilemoe_export import _moved

    assert _moved.MOVED == {**MOVED, "_fbs": "lowering"}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_name_is_the_moved_module(old):
    new = f"mobilemoe_export.{MOVED[old]}.{old}"
    mod = importlib.import_module(f"mobilemoe_export.{old}")
    assert mod is importlib.import_module(new)
    assert mod is getattr(mm, old)  # mm.quant, from mobilemoe_export import backend
    assert sys.modules[f"mobilemoe_export.{old}"] is mod
    # the module keeps its own identity (reload, pickling, relative imports)
    assert mod.__name__ == mod.__spec__.name == new
    assert Path(mod.__file__).resolve() == PKG / MOVED[old] / f"{old}.py"


def test_old_names_share_classes_and_state(monkeypatch):
    from mobilemoe_export.quantization.transforms import MobileMoELinear
    from mobilemoe_export.transforms import MobileMoELinear as OldLinear

    assert OldLinear is MobileMoELinear is mm.MobileMoELinear
    import mobilemoe_export.quant as old_quant
    from mobilemoe_export.quantization import quant

    monkeypatch.setattr(old_quant, "_layout_probe", 42, raising=False)
    assert quant._layout_probe == 42
    # a module inside a moved package: the flatc code
    import mobilemoe_export._fbs.mobilemoe.blob.Graph as old_graph
    import mobilemoe_export.lowering._fbs.mobilemoe.blob.Graph as graph

    assert old_graph is graph


def test_unknown_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mobilemoe_export.no_such_module")
    with pytest.raises(AttributeError):
        getattr(mm, "no_such_name")


def test_no_module_file_twice():
    files = [p for p in PKG.rglob("*.py") if "_fbs" not in p.relative_to(PKG).parts]
    stems = [p.stem for p in files if p.name not in ("__init__.py", "__main__.py")]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    assert not dup, f"module files that exist twice: {dup}"
    for old, room in MOVED.items():
        assert not (PKG / f"{old}.py").exists(), f"{old}.py is back at the top level"
        assert (PKG / room / f"{old}.py").is_file()
    assert not (PKG / "_fbs").exists() and (PKG / "lowering" / "_fbs" / "mobilemoe" / "blob" / "Graph.py").is_file()
    for name in TOP_LEVEL:
        assert (PKG / f"{name}.py").is_file()
    # assets/ and schema/ stay where the Rust runner, scripts and the Makefile expect them
    assert (PKG / "assets" / "tokenizer.json").is_file() and (PKG / "schema" / "ops.txt").is_file()


def test_documented_entry_points_are_tested():
    pat = re.compile(r"-m[\"', ]+(mobilemoe_export(?:\.[A-Za-z_]+)*)")
    skip_dirs = {"target", "build", ".gradle", "__pycache__", "_fbs", ".venv", "node_modules", "results"}
    found = set()
    roots = [REPO / d for d in ("scripts", "docs", "tests", "runner", "android_app", "python_export")]
    files = [REPO / "README.md", REPO / "Makefile"]
    for r in roots:
        for dirpath, dirnames, filenames in os.walk(r):
            dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.endswith(".egg-info")]
            files += [Path(dirpath) / f for f in filenames
                      if f.endswith((".py", ".sh", ".md", ".rs", ".kt", ".kts", ".toml", ".txt")) or f == "Makefile"]
    for f in files:
        if f.is_file():
            found |= set(pat.findall(f.read_text(errors="replace")))
    assert "mobilemoe_export.backend" in found and "mobilemoe_export.train" in found
    assert found <= set(ENTRY_POINTS), f"documented but not tested here: {sorted(found - set(ENTRY_POINTS))}"


def _run(args):
    return subprocess.run([sys.executable, *args], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def entry_point_runs():
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda m: (m, _run(["-m", m, "--help"])), ENTRY_POINTS)
        return dict(runs)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_python_m_entry_point(module, entry_point_runs):
    r = entry_point_runs[module]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "found in sys.modules" not in r.stderr  # runpy's warning of a module imported twice
    if module != "mobilemoe_export.backend":  # backend's __main__ only acts on --regen
        assert "usage:" in r.stdout


def test_runpy_runs_moved_module_in_its_package():
    # what `python -m mobilemoe_export.backend --regen` computes, without regenerating anything
    code = (
        "import json, runpy, sys\n"
        "sys.argv = ['backend']\n"
        "g = runpy.run_module('mobilemoe_export.backend', run_name='__main__', alter_sys=True)\n"
        "print(json.dumps({'file': g['__file__'], 'package': g['__package__'], 'fbs': str(g['_FBS_DIR']),\n"
        "                  'repo_schema': str(g['REPO_ROOT'] / 'schema'), 'schema': str(g['SCHEMA_DIR'])}))\n"
    )
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve() == PKG / "lowering" / "backend.py"
    assert info["package"] == "mobilemoe_export.lowering"
    assert Path(info["fbs"]) == PKG / "lowering" / "_fbs"
    assert Path(info["schema"]) == PKG / "schema"
    if (REPO / "schema" / "ops.txt").is_file():  # a checkout
        assert Path(info["repo_schema"]) == REPO / "schema"


def test_import_stays_lazy():
    code = (
        "import json, sys\n"
        "import mobilemoe_export\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('mobilemoe_export', 'executorch.exir')))))\n"
    )
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    for heavy in ("executorch.exir", "mobilemoe_export.lowering.backend", "mobilemoe_export.lowering.export",
                  "mobilemoe_export.training.train", "mobilemoe_export.sources.hf_export"):
        assert heavy not in loaded
    # no old name is imported until something asks for it
    assert not {f"mobilemoe_export.{old}" for old in MOVED} & loaded
