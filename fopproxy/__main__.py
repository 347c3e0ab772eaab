"""Allow `python -m fopproxy`."""

import sys

from fopproxy.cli import main

sys.exit(main())
