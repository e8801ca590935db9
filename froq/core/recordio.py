"""insightface's RecordIO training sets (``train.rec`` + ``train.idx``), read without MXNet.

The format (MXNet / dmlc-core RecordIO, as insightface's MS1MV2, Glint360K and WebFace releases
use it):

- ``train.idx``: text, one ``<record index>\\t<byte offset in train.rec>`` per line.
- ``train.rec``: records, each starting on a 4-byte boundary with two little-endian uint32 words:
  the magic ``0xced7230a`` and ``lrecord`` (upper 3 bits: ``cflag``, lower 29 bits: payload length),
  then the payload padded to a multiple of 4 bytes. ``cflag`` 0 is a whole record; a payload that
  held the magic word at an aligned position was split there into parts with ``cflag`` 1 (first),
  2 (middle), 3 (last), the magic word itself re-inserted between parts when reading.
- a payload (``IRHeader``): uint32 ``flag``, float32 ``label``, uint64 ``id``, uint64 ``id2``
  (24 bytes, little-endian); when ``flag > 0``, ``flag`` float32 labels follow (and ``label`` is
  unused); then the encoded image (JPEG or PNG).
- insightface releases start with record 0, a header record (``flag > 0``) whose first label is
  one past the last image record: images are records ``1 .. label[0]-1``. Record 0 is then not an
  image and is not scored.

Rows are keyed by the record index (written as the ``path`` of the row); the identity label (the
first label) is kept in a ``label`` column.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from froq.core.errors import FroqError, first_line
from froq.core.images import Preprocess, decode_rgb

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_WORDS = struct.Struct("<II")
_MAGIC_BYTES = struct.pack("<I", MAGIC)  # the word a payload is split at (and re-joined with)
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
MAX_PARTS = 1 << 16  # a record split into more parts than this is corrupt


def is_record_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a RecordIO file (``*.rec``) rather than an image folder."""
    return str(path).lower().endswith(".rec")


def index_path(rec: str | os.PathLike) -> Path:
    """The ``.idx`` beside a ``.rec`` (``train.rec`` → ``train.idx``)."""
    return Path(rec).with_suffix(".idx")


def read_index(idx: str | os.PathLike, rec_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, offsets)`` int64 arrays of a ``.idx`` file, sorted by key.

    FroqError naming the file and line for a line that is not ``<int>\\t<int>``, a repeated key,
    or an offset outside the ``.rec`` (``rec_size`` bytes)."""
    idx = Path(idx)
    if not idx.is_file():
        raise FroqError(f"{idx}: record index not found: a RecordIO set is train.rec with "
                        "train.idx beside it")
    keys, offsets = [], []
    with open(idx, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
            except ValueError:
                raise FroqError(f"{idx}:{number}: expected '<record index> <byte offset>' "
                                f"(got {line[:60]!r}): not a RecordIO index") from None
            if offset < 0 or (rec_size is not None and offset + 8 > rec_size) or offset % 4:
                raise FroqError(f"{idx}:{number}: offset {offset} is outside the .rec file "
                                f"({rec_size} bytes) or not 4-byte aligned: the index belongs "
                                "to another file or the .rec is truncated")
            keys.append(key)
            offsets.append(offset)
    if not keys:
        raise FroqError(f"{idx}: empty record index")
    keys_a, offsets_a = np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    order = np.argsort(keys_a, kind="stable")
    keys_a, offsets_a = keys_a[order], offsets_a[order]
    repeated = np.flatnonzero(np.diff(keys_a) == 0)
    if repeated.size:
        raise FroqError(f"{idx}: record index {int(keys_a[repeated[0]])} is listed twice")
    return keys_a, offsets_a


def read_payload(fh, offset: int, where: str) -> bytes:
    """The payload of the record at ``offset`` of an open ``.rec`` (parts joined). ValueError
    naming ``where`` for a bad magic word, a bad part flag or a record cut short."""
    fh.seek(offset)
    chunks: list[bytes] = []
    for part in range(MAX_PARTS):
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{where}: record cut short at byte {fh.tell()} (truncated .rec)")
        magic, lrecord = _WORDS.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"{where}: no RecordIO magic word at byte {fh.tell() - 8} "
                             "(corrupt .rec, or an .idx of another file)")
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        data = fh.read(length)
        if len(data) < length:
            raise ValueError(f"{where}: record cut short at byte {fh.tell()} (truncated .rec)")
        fh.seek((4 - length % 4) % 4, os.SEEK_CUR)
        expected = (0, 1) if part == 0 else (2, 3)
        if cflag not in expected:
            raise ValueError(f"{where}: record part flag {cflag} out of sequence (corrupt .rec)")
        if part:
            chunks.append(_MAGIC_BYTES)
        chunks.append(data)
        if cflag in (0, 3):
            return b"".join(chunks)
    raise ValueError(f"{where}: more than {MAX_PARTS} parts (corrupt .rec)")


def unpack_header(payload: bytes, where: str) -> tuple[int, np.ndarray, bytes]:
    """``(flag, labels, image bytes)`` of a record payload: ``labels`` is the float32 label (one
    value) or the ``flag`` labels that follow the header. ValueError naming ``where`` when short."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"{where}: record of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, _id, _id2 = _HEADER.unpack_from(payload)
    start = _HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(payload) < end:
            raise ValueError(f"{where}: header announces {flag} labels but the record is too short")
        return flag, np.frombuffer(payload[start:end], dtype="<f4").astype(np.float64), payload[end:]
    return flag, np.array([label], dtype=np.float64), payload[start:]


class RecordFile:
    """An insightface RecordIO set: ``keys`` (record indices of images, sorted), the byte offset
    of each, and reading one record's image and label. Open with ``RecordFile(path_to_rec)``;
    FroqError (one line) for a missing, truncated or corrupt ``.rec``/``.idx``."""

    def __init__(self, rec: str | os.PathLike) -> None:
        self.path = Path(rec)
        if not self.path.is_file():
            raise FroqError(f"{self.path}: RecordIO file not found")
        self.size = self.path.stat().st_size
        keys, offsets = read_index(index_path(self.path), self.size)
        self._fh = None
        self._pid = None
        flag, labels, _ = self._check(int(keys[0]), int(offsets[0]))
        self._check(int(keys[-1]), int(offsets[-1]))
        if keys[0] == 0 and flag > 0:  # insightface's header record: images are 1 .. label[0]-1
            stop = int(labels[0]) if labels.size and labels[0] >= 1 else int(keys[-1]) + 1
            keep = (keys >= 1) & (keys < stop)
            log.info("%s: record 0 is the set's header (images 1..%d), not an image", self.path, stop - 1)
            keys, offsets = keys[keep], offsets[keep]
        if not keys.size:
            raise FroqError(f"{self.path}: no image records")
        self.keys = keys
        self.offsets = offsets

    def keep_only(self, keys: Sequence[int]) -> None:
        """Restrict the set to the image records ``keys`` (record indices; others are ignored)."""
        mask = np.isin(self.keys, np.asarray(list(keys), dtype=np.int64))
        self.keys, self.offsets = self.keys[mask], self.offsets[mask]

    def _check(self, key: int, offset: int):
        try:
            return unpack_header(self.payload_at(offset, key), f"{self.path} record {key}")
        except ValueError as exc:
            raise FroqError(f"{exc}: not a readable RecordIO set (check {index_path(self.path)} "
                            f"belongs to {self.path.name})") from None

    def _handle(self):
        if self._fh is None or self._pid != os.getpid():  # one handle per DataLoader worker
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        return self._fh

    def payload_at(self, offset: int, key: int) -> bytes:
        """The payload bytes of record ``key`` at ``offset``. ValueError when corrupt."""
        return read_payload(self._handle(), offset, f"{self.path} record {key}")

    def position(self, key: int) -> int | None:
        """Index of record ``key`` in ``keys`` (None when it is not an image record here)."""
        i = int(np.searchsorted(self.keys, key))
        return i if i < self.keys.size and self.keys[i] == key else None

    def record(self, i: int) -> tuple[float, bytes]:
        """``(label, image bytes)`` of the ``i``-th image record. ValueError when corrupt."""
        key = int(self.keys[i])
        _flag, labels, image = unpack_header(self.payload_at(int(self.offsets[i]), key),
                                             f"{self.path} record {key}")
        return float(labels[0]) if labels.size else float("nan"), image

    def label(self, i: int) -> float:
        """The identity label of the ``i``-th image record (NaN when it cannot be read)."""
        try:
            return self.record(i)[0]
        except ValueError:
            return float("nan")

    def __getstate__(self):  # DataLoader workers reopen the file
        state = dict(self.__dict__)
        state["_fh"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return int(self.keys.size)


class RecordDataset(torch.utils.data.Dataset):
    """Images of a ``RecordFile`` (the records at ``positions``) as tensors, like
    ``froq.core.images.ImageFolder``: ``dataset[i]`` → ``(i, tensor or None, error or None)``, to be
    batched by ``collate_images`` (in DataLoader workers, pinned memory on CUDA)."""

    def __init__(self, records: RecordFile, preprocess: Preprocess, positions: Sequence[int],
                 raw: bool = False) -> None:
        self.records = records
        self.preprocess = preprocess
        self.positions = list(positions)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        try:
            _label, data = self.records.record(self.positions[index])
            tensor = self.preprocess.to_uint8(decode_rgb(io.BytesIO(data)))
            if not self.raw:
                tensor = self.preprocess.normalize(tensor)
            return index, tensor, None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return index, None, first_line(exc, limit=None)


def write_records(rec: str | os.PathLike, records: Sequence[tuple[int, float, bytes]],
                  header_record: bool = True) -> None:
    """Write a small RecordIO set (``rec`` and its ``.idx``), insightface style: in: ``(record
    index, label, encoded image)`` triples (indices from 1) and whether to write record 0 as the
    set's header. For tests and examples; splits a payload that holds the magic word as MXNet does."""
    rec = Path(rec)
    entries = []
    if header_record:
        last = max(k for k, _, _ in records) + 1
        labels = np.array([last, last], dtype="<f4").tobytes()
        entries.append((0, _HEADER.pack(2, 0.0, 0, 0) + labels))
    entries += [(k, _HEADER.pack(0, float(label), k, 0) + data) for k, label, data in records]
    lines = []
    with open(rec, "wb") as fh:
        for key, payload in entries:
            lines.append(f"{key}\t{fh.tell()}\n")
            _write_payload(fh, payload)
    index_path(rec).write_text("".join(lines))


def _write_payload(fh, payload: bytes) -> None:
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == _MAGIC_BYTES]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(payload[start:cut])
        start = cut + 4
    pieces.append(payload[start:])
    for n, piece in enumerate(pieces):
        cflag = 0 if len(pieces) == 1 else (1 if n == 0 else (3 if n == len(pieces) - 1 else 2))
        fh.write(_WORDS.pack(MAGIC, (cflag << 29) | len(piece)))
        fh.write(piece + b"\0" * ((4 - len(piece) % 4) % 4))
