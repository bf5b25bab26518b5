"""``python -m hermetic.cli``: the command line, as ``python -m hermetic``.
Imported as a module (a walk over the package does), it runs nothing."""

import sys

from hermetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
