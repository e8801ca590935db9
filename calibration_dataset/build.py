"""Build a calibration set from aligned faces (the builder lives in ``preparation/calibration.py``).

    python calibration_dataset/build.py --source aligned/ --output calibration_dataset/ --variants 2

Options: ``--help``, or the docstring of ``preparation.calibration``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a file

from froq.core.cli import run_main  # noqa: E402
from preparation.calibration import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main))
