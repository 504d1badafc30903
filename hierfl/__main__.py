"""`python -m hierfl` runs the command line."""

import sys

from hierfl.cli.commands import main

sys.exit(main())
