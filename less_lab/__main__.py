"""``python -m less_lab ...`` is ``less-lab ...`` (and what ``torchrun -m less_lab`` runs)."""

import sys

from less_lab.cli import main

sys.exit(main())
