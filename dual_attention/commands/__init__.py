"""Sub-commands of the ``dat`` CLI, one module each (see :mod:`dual_attention.cli`)."""
