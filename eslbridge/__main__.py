"""`python -m eslbridge` is the same as the `eslbridge` command."""

import sys

from eslbridge.cli import main

sys.exit(main())
