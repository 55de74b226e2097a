"""python -m app: serve the dashboard, manage users and tokens, or run configs headless."""

import sys

from .cli import main

sys.exit(main())
