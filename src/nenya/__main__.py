"""``python -m nenya``."""

import sys

from nenya.cli import main

sys.exit(main())
