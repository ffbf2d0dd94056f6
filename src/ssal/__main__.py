"""``python -m ssal`` is the ``ssal`` command."""

import sys

from .cli import main

sys.exit(main())
