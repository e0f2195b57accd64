"""`python -m interlock_cli ...` runs the `interlock` command."""

import sys

from interlock_cli import main

sys.exit(main())
