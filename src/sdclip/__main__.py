"""`python -m sdclip` is the `sdclip` command."""

import sys

from sdclip.cli import main

sys.exit(main())
