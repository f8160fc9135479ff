"""``python -m surefit`` is the ``surefit`` command (so ``torchrun -m surefit`` works)."""

import os
import sys

from .cli import main

if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: the launcher reports this rank's error
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)
code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:
    from .distributed import leave

    leave(code)
sys.exit(code)
