"""``python -m hermetic``: the command line."""

import sys

from hermetic.cli import main

sys.exit(main())
