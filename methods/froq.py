"""FROQ itself as a method of this registry: the observer's quality (spec §4), higher = better.

quality = mean L2 norm of the outputs of the observer's selected layers, from one (early-exiting)
forward pass per image. The observer JSON comes from ``observer/initialization.py`` with the same
FR model; this wraps ``observer.inference.froq_qualities`` so FROQ can be scored with
``methods/score.py --method froq --set methods.froq.observer=outputs/observer.json``
beside the comparison methods (same images, model and CSV format).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from face_recognition_model.loading import FRModel
from froq.core.config import Key
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from observer.inference import check_same_model, froq_qualities, read_observer

NAME = "froq"
DESCRIPTION = "FROQ: mean L2 norm of the observer's selected FR layers; higher = better"

OPTIONS = {
    "observer": Key("path", default=None,
                    help="observer JSON written by observer/initialization.py (same FR model)"),
    "early_exit": Key("bool", default=True, help="stop each forward once the selected layers fired"),
}


def components(options: dict) -> tuple[str, ...]:
    """No extra columns."""
    return ()


def _observer(fr: FRModel, options: dict) -> dict:
    """The observer record of ``options['observer']``, checked against ``fr``; FroqError if unusable."""
    path = options.get("observer")
    if not path:
        raise FroqError("method froq needs the observer file: set methods.froq.observer=PATH "
                        "(written by observer/initialization.py with the same FR config)")
    if not Path(path).is_file():
        raise FroqError(f"methods.froq.observer: file not found: {path} "
                        "(run observer/initialization.py first, or fix the path)")
    obs = read_observer(path)
    check_same_model(obs, fr, str(path))
    return obs


def check(fr: FRModel, options: dict) -> None:
    """FroqError when the observer file is missing, unusable or made with another model."""
    _observer(fr, options)


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """FROQ quality of every readable image of ``root`` (or the relative ``paths``)."""
    obs = _observer(fr, options)
    return froq_qualities(fr, root, obs, batch_size=batch_size, paths=paths,
                          early_exit=options["early_exit"], num_workers=num_workers,
                          resume_path=resume_path, failures=failures)
