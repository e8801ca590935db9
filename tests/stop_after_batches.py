"""Run ``froq ARGS`` with one process stopping abruptly (``os._exit(17)``, as if killed) after it
wrote a number of batches: ``python tests/stop_after_batches.py RANK:BATCHES froq-args...``.

The stop is a ``froq.core.runner.AFTER_BATCH`` callback put there by this test launcher; the
production code only runs the callbacks it is given.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from froq.commands import main  # noqa: E402
from froq.core import runner  # noqa: E402


def stopper(rank: int, batches: int):
    """The callback: the process of ``rank`` exits abruptly once it has written ``batches``."""
    def hook(me, done: int) -> None:
        if me.rank == rank and done >= batches:
            logging.getLogger("froq.test").error("%s: exiting abruptly after %d batches (test)", me, done)
            os._exit(17)
    return hook


if __name__ == "__main__":
    rank, _, batches = sys.argv[1].partition(":")
    runner.AFTER_BATCH.append(stopper(int(rank), int(batches)))
    sys.exit(main(sys.argv[2:]))
