"""``python -m migrate``: the same as the ``migrate`` command."""

import sys

from migrate.cli.app import main

sys.exit(main())
