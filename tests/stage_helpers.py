"""Helpers shared by the tests that drive the stage CLIs in-process, and by the methods' tests."""

from __future__ import annotations

import logging


def error_line(rc: int, err: str, *needles) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line containing every needle; returns it."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def run_in_process(main, argv):
    """Run a stage's ``main(argv)`` in-process and return what it returns; undo its logging set-up
    afterwards (it replaces the root handlers, which would otherwise keep pointing at this test's
    captured stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def as_fr(network, size: int, arch: str = "toy"):
    """A bare network as an eval-mode ``FRModel`` on CPU (RGB, [-1, 1], ``size``×``size`` input)."""
    import torch

    from face_recognition_model.loading import FRModel
    from froq.core.images import Preprocess

    return FRModel(network=network.eval(), preprocess=Preprocess(size=(size, size)), arch=arch,
                   weights=None, weights_sha256=None, device=torch.device("cpu"))


def froq_scores(fr, root, layers, **kwargs):
    """``observer.inference.froq_qualities`` as ``(paths, qualities, embeddings or None)``."""
    import numpy as np

    from observer.inference import froq_qualities

    result = froq_qualities(fr, root, layers, **kwargs)
    emb = result.values[:, 1:].astype(np.float32) if kwargs.get("save_embeddings") else None
    return result.paths, result.column("quality"), emb
