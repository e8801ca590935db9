"""Helpers shared by the stage entry points: the FR model from a stage config, summaries."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from face_recognition_model.loading import FRModel, load_fr_config, load_fr_model
from froq.config import Key, device_name
from froq.device import resolve_device
from froq.errors import FroqError
from froq.images import FailureLog

log = logging.getLogger(__name__)

# keys every stage accepts (in addition to its own)
COMMON_KEYS = {
    "device": Key(device_name, default="auto", help="auto | cpu | cuda | cuda:N"),
    "num_workers": Key("int", default=0, minimum=0, help="DataLoader worker processes"),
    "seed": Key("int", default=0),
    "fr_overrides": Key("list", default=[], help="--set style overrides applied to the FR config"),
}


def fr_from_stage_config(cfg: dict) -> FRModel:
    """Load the FR model named by ``cfg['face_recognition_config']`` on ``cfg['device']``.

    Keys of the FR config can be overridden from the stage with ``fr_overrides: [model.weights=...]``
    or on the command line with ``--set fr_overrides=[model.weights=PATH]``.
    """
    source = cfg.get("_source", "stage config")
    try:
        device = resolve_device(cfg.get("device"))
    except FroqError as exc:
        raise FroqError(f"{source}: device: {exc}") from None
    torch.manual_seed(int(cfg.get("seed", 0)))
    fr_path = Path(cfg["face_recognition_config"])
    if not fr_path.is_file():
        raise FroqError(f"{source}: face_recognition_config: FR config file not found: {fr_path} "
                        "(see configs/fr/ for the shipped ones)")
    fr_cfg = load_fr_config(fr_path, cfg.get("fr_overrides") or [])
    fr = load_fr_model(fr_cfg, device)
    check_input_size(fr)
    log.info("FR model %s (%s) on %s", fr.arch, fr.weights or "random weights", device)
    return fr


def check_input_size(fr: FRModel) -> None:
    """One forward of a black image at the FR config's ``preprocess.size``; FroqError naming the FR
    config when the network cannot take that size (instead of a shape error mid-run)."""
    h, w = fr.preprocess.size
    try:
        with torch.no_grad():
            out = fr.network(torch.zeros(1, 3, h, w, device=fr.device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FroqError(f"{fr.config_path}: {fr.arch} cannot take inputs of preprocess.size "
                        f"{[h, w]} ({first}): set preprocess.size to the model's input size") from None
    fr.embedding_dim = int(out.reshape(1, -1).shape[1])  # spares stages a second blank forward


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
