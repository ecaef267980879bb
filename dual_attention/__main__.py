"""``python -m dual_attention`` is the ``dat`` command."""

import sys

from dual_attention.cli import main

sys.exit(main())
