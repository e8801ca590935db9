"""Alignment templates: where an FR model wants the face in its input image.

An FR config names its alignment with the key ``alignment`` (``face_recognition_model.loading``):

    alignment: arcface112                     # a named template (below), or
    alignment:                                # five points of your own
      size: [112, 96]                         # [height, width], the order of preprocess.size
      points: [[30.29, 51.70], [65.53, 51.50], [48.03, 71.74], [33.55, 92.37], [62.73, 92.20]]

Points are ``[x, y]`` in output pixels (pixel centres at integers), in the order left eye, right
eye, nose tip, left mouth corner, right mouth corner ("left" = the image's left). Without the key
the template follows ``preprocess.size`` as it always did (150×150 → ``dlib150``, 112×112 →
``arcface112``, other sizes → none: align the faces yourself).

Named templates
---------------
``dlib150``
    dlib's own chip, ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)`` from the 5-point
    predictor (the input of dlib's face-recognition ResNet). ``points`` are not used to align; the
    ones stored (``DLIB150_POINTS``) are where the five points land on such chips, for checking
    that a folder is aligned.
``arcface112``
    insightface's 112×112 five-point template (ArcFace, AdaFace, most 112-px models).
``sphereface96x112``
    The 96 wide × 112 high template of SphereFace / CosFace / MobileFaceNet (the same points as
    ``arcface112`` 8 px to the left: insightface's 112×112 template is this one centred in a square).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from froq.core.errors import FroqError

#: insightface's 112×112 template: left eye, right eye, nose tip, left / right mouth corner (x, y).
ARCFACE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
               (41.5493, 92.3655), (70.7299, 92.2041))
#: SphereFace / MobileFaceNet 96×112 template (the arcface112 points 8 px to the left).
SPHEREFACE_96X112 = tuple((round(x - 8.0, 4), y) for x, y in ARCFACE_112)
#: where the five points (68-point landmarks: eye centres, nose tip 30, mouth corners 48/54) lie on
#: dlib150 chips: the mean over 200 dlib150 chips of LFW photos (evenly spaced over the 4,870),
#: located as ``preparation.align.chip_points`` does; used only to recognise aligned folders.
DLIB150_POINTS = ((46.9, 46.2), (100.0, 46.1), (73.4, 74.7), (49.2, 104.5), (97.4, 104.6))
DLIB150_PADDING = 0.25

FIVE_POINTS = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")


@dataclass(frozen=True)
class AlignmentTemplate:
    """An alignment: output ``size`` (height, width), the five output ``points`` (x, y) and how the
    crop is made: ``method`` ``similarity`` (least-squares similarity transform of the five
    points onto ``points``) or ``dlib_chip`` (``dlib.get_face_chip``, dlib150 only)."""

    name: str
    size: tuple[int, int]
    points: tuple[tuple[float, float], ...]
    method: str = "similarity"

    @property
    def width(self) -> int:
        """Output width in pixels."""
        return self.size[1]

    @property
    def height(self) -> int:
        """Output height in pixels."""
        return self.size[0]

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye points (output pixels): the scale of alignment errors."""
        (lx, ly), (rx, ry) = self.points[0], self.points[1]
        return math.hypot(rx - lx, ry - ly)

    def record(self) -> dict:
        """JSON-able description (``template_from_record`` reads it back)."""
        return {"name": self.name, "size": list(self.size), "method": self.method,
                "points": [list(p) for p in self.points]}


NAMED = {
    "dlib150": AlignmentTemplate("dlib150", (150, 150), DLIB150_POINTS, "dlib_chip"),
    "arcface112": AlignmentTemplate("arcface112", (112, 112), ARCFACE_112),
    "sphereface96x112": AlignmentTemplate("sphereface96x112", (112, 96), SPHEREFACE_96X112),
}
#: today's rule for FR configs without ``alignment``: preprocess (height, width) → template name
BY_SIZE = {(150, 150): "dlib150", (112, 112): "arcface112"}


def named_template(name: str, source: str = "alignment") -> AlignmentTemplate:
    """A named template; FroqError listing the names for an unknown one."""
    if name not in NAMED:
        raise FroqError(f"{source}: unknown alignment template {name!r}: use one of "
                        f"{', '.join(NAMED)} or give size and points")
    return NAMED[name]


def _size(value, source: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise FroqError(f"{source}: alignment.size: expected an integer or [height, width] (got {value!r})")
    return int(value[0]), int(value[1])


def _points(value, size: tuple[int, int], source: str) -> tuple[tuple[float, float], ...]:
    bad = FroqError(f"{source}: alignment.points: expected five [x, y] points ({', '.join(FIVE_POINTS)}) "
                    f"in output pixels (got {value!r})")
    if not isinstance(value, (list, tuple)) or len(value) != 5:
        raise bad
    out = []
    for p in value:
        if not (isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
            raise bad
        x, y = float(p[0]), float(p[1])
        if not (0 <= x <= size[1] - 1 and 0 <= y <= size[0] - 1):
            raise FroqError(f"{source}: alignment.points: {[x, y]} lies outside the "
                            f"{size[1]}x{size[0]} (width x height) output")
        out.append((x, y))
    if out[1][0] <= out[0][0]:
        raise FroqError(f"{source}: alignment.points: the right eye (2nd point) must lie right of the "
                        "left eye (1st): points are left eye, right eye, nose, left / right mouth corner")
    return tuple(out)


def template_from_config(value, preprocess_size: tuple[int, int],
                         source: str = "FR config") -> AlignmentTemplate | None:
    """The template of an FR config's ``alignment`` value (None, a name, or ``{size, points[, name]}``).

    None → the template of ``preprocess_size`` (``BY_SIZE``), or None when there is none. FroqError
    naming ``source`` for a bad value, and when the template's aspect ratio differs from
    ``preprocess_size`` (the model would get squashed faces)."""
    if value is None:
        name = BY_SIZE.get(tuple(preprocess_size))
        return NAMED[name] if name else None
    if isinstance(value, str):
        template = named_template(value, source)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"size", "points", "name"})
        if unknown:
            raise FroqError(f"{source}: alignment: unknown key(s) {', '.join(unknown)} "
                            "(expected size, points and optionally name)")
        if "size" not in value or "points" not in value:
            raise FroqError(f"{source}: alignment: give both size ([height, width]) and points "
                            "(five [x, y]), or a template name")
        size = _size(value["size"], source)
        name = value.get("name") or f"custom{size[1]}x{size[0]}"
        if not isinstance(name, str) or name in NAMED:
            raise FroqError(f"{source}: alignment.name: {name!r} must be a new name (not one of "
                            f"{', '.join(NAMED)}); use the name alone for a named template")
        template = AlignmentTemplate(name, size, _points(value["points"], size, source))
    else:
        raise FroqError(f"{source}: alignment: expected a template name ({', '.join(NAMED)}) or "
                        f"{{size: [height, width], points: five [x, y]}} (got {value!r})")
    th, tw = template.size
    ph, pw = preprocess_size
    if abs(tw * ph - pw * th) > 0.01 * tw * ph:
        raise FroqError(f"{source}: alignment {template.name} makes {tw}x{th} (width x height) faces "
                        f"but preprocess.size {[ph, pw]} is {pw}x{ph}: the model would get squashed "
                        "faces; make the two agree (preprocess.size is [height, width])")
    return template


def template_from_record(record: Mapping | None) -> AlignmentTemplate | None:
    """The template of a ``AlignmentTemplate.record()`` dict (e.g. from an observer file); None for
    None. FroqError for a malformed record."""
    if record is None:
        return None
    try:
        name = record["name"]
        if name in NAMED:
            return NAMED[name]
        size = _size(record["size"], "alignment record")
        return AlignmentTemplate(str(name), size, _points(record["points"], size, "alignment record"))
    except (KeyError, TypeError):
        raise FroqError(f"malformed alignment record {record!r}: expected name, size and points") from None
