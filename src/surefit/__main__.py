"""``python -m surefit`` is the ``surefit`` command (so ``torchrun -m surefit`` works)."""

import sys

from .cli import main

sys.exit(main())
