"""FROQ toolkit: training-free face image quality from the observed activations of a frozen FR model.

The public face of the toolkit (everything else is reachable from here)::

    import froq
    observer = froq.Observer.load("outputs/observer.json")      # FR config read from the file
    result = observer.score("aligned_faces/")                    # or a batch tensor / PIL images
    result.quality                                               # higher = better

``froq.api`` holds the Python API, ``froq.commands`` the ``froq`` command (``froq --help``),
``froq.pipeline`` the end-to-end orchestrator behind ``run.sh``; ``froq.core`` is the shared
plumbing that every room builds on. Names are imported lazily, so ``import froq.core.io`` stays
cheap and never loads a model.
"""

from __future__ import annotations

__version__ = "0.2.0"

_API = ("Observer", "ScoreResult", "calibrate", "pseudo_labels", "load_fr_model")


def __getattr__(name: str):
    if name in _API:
        from froq import api
        return getattr(api, name)
    raise AttributeError(f"module 'froq' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
