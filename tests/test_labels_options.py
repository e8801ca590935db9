"""Speed options of the pseudo-labels (issue 15) change no result beyond float noise and leave the
caller's model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from baselineFIQA.labels import LabelSettings, PseudoLabeler, auto_channels_last, compute_pseudo_labels
from froq.core.config import bool_or_auto
from test_observer import SIZE, tiny_fr


def test_channels_last_gives_the_same_labels_and_leaves_the_model_alone(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    fr = tiny_fr()
    conv = fr.network.stem[0].weight
    off = compute_pseudo_labels(fr, tmp_path, batch_size=2, mpx=8, noise_count=3, channels_last=False)
    on = compute_pseudo_labels(fr, tmp_path, batch_size=2, mpx=8, noise_count=3, channels_last=True)
    assert on.paths == off.paths
    np.testing.assert_allclose(on.values, off.values, atol=1e-5)
    assert fr.network.stem[0].weight is conv and conv.is_contiguous()  # the caller's network untouched
    labeler = PseudoLabeler(fr, LabelSettings(mpx=8, channels_last=True))
    assert labeler.network is not fr.network
    stem = dict(labeler.network.named_modules())["stem.0"]  # a traced copy (affines folded)
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_setting_values():
    assert auto_channels_last(torch.device("cpu")) is True
    assert auto_channels_last(torch.device("cuda")) is False
    assert bool_or_auto("AUTO") == "auto" and bool_or_auto(False) is False
    with pytest.raises(ValueError, match="true, false or auto"):
        bool_or_auto("yes")
