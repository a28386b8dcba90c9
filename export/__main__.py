"""`python -m export CKPT --out PKG ...`: the same as `fineparser-export`."""

import sys

from export.cli import main

sys.exit(main())
