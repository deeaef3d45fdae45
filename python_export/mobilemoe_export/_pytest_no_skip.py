"""pytest plugin used by `make test` (scripts/run_pytest.sh: `-p mobilemoe_export._pytest_no_skip`):
with MOBILEMOE_NO_SKIP=1 a skipped test is reported as a failure, so a missing prerequisite cannot
hide behind a green run."""

import os

import pytest

NO_SKIP = os.environ.get("MOBILEMOE_NO_SKIP", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if NO_SKIP and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under MOBILEMOE_NO_SKIP: {rep.longrepr}"
