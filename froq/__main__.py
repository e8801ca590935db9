"""``python -m froq COMMAND ...`` — the same as the ``froq`` command."""

import sys

from froq.commands import main

sys.exit(main())
