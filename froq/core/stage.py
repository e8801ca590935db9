"""Helpers shared by the stage entry points: common config keys, output paths, messages."""

from __future__ import annotations

import logging
from pathlib import Path

from froq.core.config import Key, device_name
from froq.core.errors import FroqError
from froq.core.images import FailureLog

log = logging.getLogger(__name__)

# keys every stage accepts (in addition to its own)
COMMON_KEYS = {
    "device": Key(device_name, default="auto", help="auto | cpu | cuda | cuda:N"),
    "num_workers": Key("int", default=0, minimum=0, help="DataLoader worker processes"),
    "seed": Key("int", default=0),
    "fr_overrides": Key("list", default=[], help="--set style overrides applied to the FR config"),
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
