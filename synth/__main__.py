"""``python -m synth`` is ``fineparser-synth``."""

import sys

from synth.cli import main

sys.exit(main())
