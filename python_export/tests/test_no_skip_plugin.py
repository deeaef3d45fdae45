"""`make test` cannot hide a skip (issue #26 item 4): under MOBILEMOE_NO_SKIP=1 the plugin fails a
skipped test and a module skipped at collection (a module-level importorskip), and reports the
number of tests each file ran."""

import os
import subprocess
import sys


def _run(tmp_path, no_skip: bool, workers: int = 0):
    (tmp_path / "test_skipmod.py").write_text('import pytest\npytest.importorskip("no_such_module_xyz")\n'
                                              'def test_a():\n    pass\n')
    (tmp_path / "test_skip.py").write_text("import pytest\ndef test_b():\n    pytest.skip('x')\n")
    (tmp_path / "test_ok.py").write_text("def test_c():\n    pass\n")
    env = dict(os.environ, MOBILEMOE_NO_SKIP="1" if no_skip else "0")
    par = ["-n", str(workers), "--dist", "loadfile"] if workers else []
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "mobilemoe_export._pytest_no_skip",
                           "-p", "no:cacheprovider", *par, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


def test_collection_and_test_skips_fail_under_no_skip(tmp_path):
    r = _run(tmp_path, True)
    assert r.returncode != 0
    assert "skipped at collection under MOBILEMOE_NO_SKIP" in r.stdout


def test_skips_stay_skips_without_it_and_counts_are_printed(tmp_path):
    r = _run(tmp_path, False)
    assert r.returncode == 0, r.stdout
    assert "tests run per file" in r.stdout and "test_ok.py" in r.stdout


def test_under_xdist_skips_fail_and_every_worker_is_counted(tmp_path):
    # scripts/run_pytest.sh runs the suites on two pytest-xdist workers: the verdict and the
    # per-file counts must still cover the tests the workers ran.
    (tmp_path / "test_more.py").write_text("def test_d():\n    pass\ndef test_e():\n    pass\n")
    r = _run(tmp_path, True, workers=2)
    assert r.returncode != 0
    assert "skipped at collection under MOBILEMOE_NO_SKIP" in r.stdout
    r = _run(tmp_path, False, workers=2)
    assert r.returncode == 0, r.stdout
    counts = {line.split()[1]: int(line.split()[0]) for line in r.stdout.splitlines()
              if line.strip().endswith(".py") and line.split()[0].isdigit()}
    assert counts.get("test_more.py") == 2 and counts.get("test_ok.py") == 1, r.stdout
