"""`python -m hierfl` runs the command line."""

import sys

from hierfl.cli import main

sys.exit(main())
