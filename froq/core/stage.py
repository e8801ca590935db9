"""Helpers shared by the stage entry points: common config keys, output paths, messages."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from froq.core.config import Key, device_name, override_list, positive_int
from froq.core.errors import FroqError
from froq.core.images import FailureLog

log = logging.getLogger(__name__)

# keys every stage accepts (in addition to its own)
COMMON_KEYS = {
    "device": Key(device_name, default="auto", help="auto | cpu | cuda | cuda:N"),
    "num_workers": Key("int", default=0, minimum=0, help="DataLoader worker processes"),
    "seed": Key("int", default=0),
    "fr_overrides": Key(override_list, default=[], help="--set style overrides applied to the FR config"),
}

# the images a scoring stage reads (methods/score.py, observer/inference.py)
TARGET_KEYS = {
    "target_dataset": Key("path", help="folder of aligned faces to score (or an insightface train.rec)"),
    "target_list": Key("path", default=None,
                       help="text file of image paths relative to target_dataset, one a line (instead of walking the folder)"),
    "batch_size": Key(positive_int, default=32),
}


def check_image_size(cfg_size, fr: FRModel, source: str, key: str = "dataset.image_size") -> None:
    """Fail clearly when a stage's ``image_size`` disagrees with the FR model's input size."""
    if cfg_size is None:
        return
    size = (cfg_size, cfg_size) if isinstance(cfg_size, int) else tuple(cfg_size)
    if tuple(size) != tuple(fr.preprocess.size):
        raise FroqError(f"{source}: {key} is {cfg_size} but the FR config's preprocess.size is "
                        f"{list(fr.preprocess.size)}: make them equal (or drop {key})")


def output_path(value: str, default_name: str) -> Path:
    """``outpath`` as a file path: a folder (existing, or ending in '/') gets ``default_name``."""
    p = Path(value)
    if value.endswith(("/", "\\")) or p.is_dir():
        return p / default_name
    return p


def no_readable_images(root, failures: FailureLog) -> str:
    """The one-line message of a stage that could read none of the images of ``root``."""
    example = f" (e.g. {failures.items[0][0]}: {failures.items[0][1]})" if failures.items else ""
    return (f"{root}: none of the {len(failures.items)} image(s) could be read{example}; "
            "nothing was written: check the folder holds image files")


def refuse_overwriting_inputs(out: str | os.PathLike, source: str, files: Mapping[str, object] = {},
                              folders: Mapping[str, object] = {}) -> None:
    """FroqError before any work when the output ``out`` (or its ``.partial``/``.meta.json``/
    ``.lock`` companions) is one of the stage's input ``files`` or lies inside an input folder.

    In: the output path, the config name for the message, ``{what: path}`` of input files (e.g.
    ``{"observer_data": "obs.json"}``) and of input folders (``{"target_dataset": DIR}``).
    """
    out = Path(out)
    mine = {_real(p) for p in (out, Path(f"{out}.partial"), Path(f"{out}.lock"),
                               out.with_suffix(".meta.json"))}
    for key, value in files.items():
        if value is not None and _real(Path(str(value))) in mine:
            raise FroqError(f"{source}: outpath {out} would overwrite the input {key} ({value}): "
                            "choose another output path")
    for key, value in folders.items():
        if value is None:
            continue
        folder = _real(Path(str(value)))
        if any(folder == p or folder in p.parents for p in mine):
            raise FroqError(f"{source}: outpath {out} lies inside the input folder {key} ({value}): "
                            "write outputs outside the images being read")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
