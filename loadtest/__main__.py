"""``python -m parley.loadtest``: the same as ``parley loadtest``."""

import sys

from .cli import main

sys.exit(main())
