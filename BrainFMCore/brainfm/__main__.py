"""``python -m brainfm ...`` runs the ``brainfm`` command."""
from __future__ import annotations

import sys

from brainfm.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
