"""`python -m zen_coder.training ...`: `zen-coder train` for launchers such as torchrun."""

import sys

from zen_coder.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
