"""pytest plugin used by `make test` (scripts/run_pytest.sh: `-p mobilemoe_export._pytest_no_skip`):
with MOBILEMOE_NO_SKIP=1 a skipped test is reported as a failure, so a missing prerequisite cannot
hide behind a green run — including a module skipped at collection (a module-level
``pytest.importorskip``), whose tests would otherwise vanish. At the end it prints how many tests
each test file ran, so a suite that silently shrank is visible (also under pytest-xdist)."""

import collections
import os

import pytest

NO_SKIP = os.environ.get("MOBILEMOE_NO_SKIP", "") not in ("", "0")
_ran = collections.Counter()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if NO_SKIP and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under MOBILEMOE_NO_SKIP: {rep.longrepr}"


def pytest_runtest_logreport(report):
    # Counted here, not in makereport: with pytest-xdist only this hook sees every worker's reports
    # in the controller process, which prints the summary.
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _ran[report.nodeid.split("::", 1)[0]] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    # a whole module skipped while collecting (importorskip, `pytest.skip(allow_module_level=True)`)
    if NO_SKIP and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"{collector.nodeid}: skipped at collection under MOBILEMOE_NO_SKIP: {rep.longrepr}"


def pytest_terminal_summary(terminalreporter):
    if _ran:
        terminalreporter.write_sep("-", "tests run per file")
        for path, n in sorted(_ran.items()):
            terminalreporter.write_line(f"{n:5d}  {path}")
        terminalreporter.write_line(f"{sum(_ran.values()):5d}  in all")
