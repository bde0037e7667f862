"""``python -m mcrlab.cli``: the same as the ``mcrlab`` command."""

import sys

from mcrlab.cli import main

sys.exit(main())
