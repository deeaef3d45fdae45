"""``python -m mobilemoe_export``: see :mod:`mobilemoe_export.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
