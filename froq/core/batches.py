"""The batch loop every stage shares: read an image folder in order, skip what is already done,
record unreadable files, show a progress bar, and hand readable batches to the stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from froq.core.images import FailureLog, ImageFolder, Preprocess, image_loader, list_images

log = logging.getLogger(__name__)


def iterate_folder(root: str | Path, preprocess: Preprocess, batch_size: int, *,
                   paths: Sequence[str] | None = None, done: set[str] | frozenset = frozenset(),
                   failures: FailureLog | None = None, num_workers: int = 0,
                   device: torch.device | None = None, raw: bool = False,
                   desc: str = "images") -> Iterator[tuple[list[str], torch.Tensor]]:
    """Yield ``(relative paths, batch on device)`` for the readable images of ``root``.

    In: the folder, the model's preprocessing, batch size; optionally an explicit path list, paths
    already ``done`` (skipped, for resume), a FailureLog that receives unreadable files, DataLoader
    workers, the device, ``raw`` for uint8 RGB tensors instead of model inputs, a progress label.
    Out: an iterator over batches in file order; a progress bar on stderr.
    """
    all_paths = list(paths) if paths is not None else list_images(root)
    todo = [p for p in all_paths if p not in done]
    if done and len(todo) < len(all_paths):
        log.info("%s: %d of %d images already done, %d to go", desc, len(all_paths) - len(todo),
                 len(all_paths), len(todo))
    if not todo:
        return
    # workers only decode and resize; normalisation runs once per batch (on the device), which is
    # cheaper than per image and gives the same numbers
    dataset = ImageFolder(root, preprocess, paths=todo, raw=True)
    loader = image_loader(dataset, batch_size, num_workers=num_workers, device=device)
    with tqdm(total=len(todo), desc=desc, unit="img", dynamic_ncols=True, leave=False,
              disable=None) as bar:  # no bar when stderr is not a terminal (logs stay clean)
        for batch in loader:
            for index, reason in batch.failures:
                if failures is not None:
                    failures.add(todo[index], reason)
                else:
                    log.warning("%s: skipped unreadable image %s (%s)", desc, todo[index], reason)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True) if device is not None else batch.images
                if not raw:
                    images = preprocess.normalize(images)
                yield [todo[i] for i in batch.indices], images
            bar.update(len(batch.indices) + len(batch.failures))
