"""python -m deniro_rt.batch == python -m deniro_rt batch."""

import sys

from .cli import main

sys.exit(main())
