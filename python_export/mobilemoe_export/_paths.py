"""Paths computed from the package's own location, in one place (so moving a module between the
package's rooms cannot silently break them).

In a checkout the package is ``<repo>/python_export/mobilemoe_export``; ``REPO_ROOT`` is then the
repository (``target/release`` for the Rust library, ``schema/`` for the schema sources).
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# the shipped tokenizer, the default checkpoint and the training corpus (paths also hard-coded in the
# Rust runner, scripts/ and the Makefile: this directory does not move)
ASSETS_DIR = PACKAGE_DIR / "assets"
# packaged copies of the repository's schema/ops.txt (read by operators/ops.py) and
# schema/mobilemoe.fbs (compiled by lowering/backend.py); tests check they are current
SCHEMA_DIR = PACKAGE_DIR / "schema"
REPO_ROOT = PACKAGE_DIR.parents[1]
