"""``python -m processor``: the same as the ``processor`` command."""

import sys

from processor.cli.main import main

sys.exit(main())
