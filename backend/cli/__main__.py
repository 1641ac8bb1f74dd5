"""`python -m backend.cli`: how the CLI starts its own workers, whether or not the script is on PATH."""

import sys

from . import main

sys.exit(main())
