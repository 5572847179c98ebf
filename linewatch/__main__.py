"""``python -m linewatch``: the same command line as the ``linewatch`` script."""

import sys

from linewatch.cli.main import main

sys.exit(main())
