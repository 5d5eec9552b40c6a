"""``python -m tests.chaos``: see ``run.py``."""

import sys

from .run import main

sys.exit(main())
