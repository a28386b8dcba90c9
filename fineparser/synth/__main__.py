"""``python -m fineparser.synth`` is ``fineparser-synth``."""

import sys

from fineparser.synth.cli import main

sys.exit(main())
