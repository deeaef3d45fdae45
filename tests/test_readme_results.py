"""README numbers come from committed results files (issue #26 item 1): every results block of
README.md is exactly what scripts/render_readme.py renders from the newest docs/results/<name>-*.json,
and no table of the Performance section sits outside such a block (numbers typed by hand)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _render_readme():
    spec = importlib.util.spec_from_file_location("render_readme", REPO / "scripts" / "render_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_result_tables_are_rendered_from_results_files():
    rr = _render_readme()
    text = (REPO / "README.md").read_text()
    blocks = rr.BLOCK.findall(text)
    assert blocks, "README.md has no results blocks"
    assert rr.unrendered_tables(text) == [], "tables typed by hand in the Performance section"
    assert rr.render(text) == text, "README.md is stale: run .venv/bin/python scripts/render_readme.py"


def test_every_results_file_records_the_machine_and_raw_samples():
    _render_readme()  # puts scripts/ (the renderers) on sys.path
    files = sorted((REPO / "docs" / "results").glob("*.json"))
    assert files
    for f in files:
        doc = json.loads(f.read_text())
        m = doc["machine"]
        assert m["cpu"] and m["cores"] and "flags" in m, f.name
        assert doc["commit"] and doc["date"] and doc["renderer"], f.name
        if "emulator" in doc:
            # instruction counts under qemu: what a kernel executes does not depend on the load
            # (the two files measured before the script recorded it have no load average)
            assert doc["counts"], f.name
        else:
            assert doc.get("loadavg_before") is not None and doc.get("loadavg_after") is not None, f.name
        importlib.import_module(doc["renderer"]).render_markdown(doc)  # every file renders


def test_a_hand_typed_table_fails_the_check(tmp_path):
    rr = _render_readme()
    text = (REPO / "README.md").read_text()
    bad = text.replace("## Performance\n", "## Performance\n\n| made up | 3.9x |\n|---|---|\n", 1)
    assert rr.unrendered_tables(bad)
    readme = tmp_path / "README.md"
    readme.write_text(bad)
    assert rr.main(["--check", "--readme", str(readme)]) == 1
