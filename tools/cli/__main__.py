"""`python -m hms_tools.cli` is the `mesh` command."""

import sys

from hms_tools.cli import main

sys.exit(main())
