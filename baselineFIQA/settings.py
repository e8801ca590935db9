"""The label settings, declared once: the auxiliary FIQA's constants and how its forwards run.

Every place that accepts them takes its keys from ``LABEL_OPTIONS``: the labels stage
(``froq labels``: ``dataset.<key>`` for the constants, top-level keys for the forwards, see
``STAGE_KEYS``), the ``aux_fiqa`` comparison method, ``froq table``'s ``labels_options`` and the
Python API (``froq.api.pseudo_labels``). ``label_options`` validates a mapping of them and fills
the defaults; ``resolve_mpx`` (baselineFIQA.perturbations) turns ``auto`` into the model's cell size.
"""

from __future__ import annotations

from typing import Mapping

from baselineFIQA.labels import OCCLUSION_PATHS, PAPER_WEIGHTS, LabelSettings, label_columns
from baselineFIQA.perturbations import NOISE_MODELS, resolve_mpx  # noqa: F401 (resolve_mpx: for the callers)
from froq.core.config import Key, bool_or_auto, float_list, get_dotted, int_or_auto, positive_int, validate
from froq.core.device import PRECISIONS


def cells(value):
    """Validator: ``auto``, an integer >= 1, or a non-empty list of different integers >= 1."""
    if value == "auto":
        return value
    if isinstance(value, list):
        if not value or len(set(map(str, value))) != len(value):
            raise ValueError(f"must be auto, an integer >= 1 or a list of different ones (got {value!r})")
        return [positive_int(v) for v in value]
    return positive_int(value)


def weight_list(value):
    """Validator: three numbers >= 0 (flip, noise, occlusion) with a positive sum."""
    value = float_list(value)
    if len(value) != 3 or min(value) < 0 or sum(value) <= 0:
        raise ValueError(f"must be three numbers >= 0 (flip, noise, occlusion) with a positive sum "
                         f"(got {value!r})")
    return value


LABEL_OPTIONS = {
    "alphas": Key(float_list, default=[0.001], help="noise strengths α"),
    "noise_count": Key(positive_int, default=10, help="noise draws K per α"),
    "mpx": Key(cells, default="auto",
               help="side of an occlusion cell in pixels, or a list of sides (one grid each); auto = the "
                    "paper's 8x8 grid: 14 px on 112 px, 19 px on 150 px"),
    "noise_model": Key("str", default="mix", choices=NOISE_MODELS,
                       help="mix = (1-a)x + a*n (paper); relative = x + a*std(x)*n"),
    "component_weights": Key(weight_list, default=list(PAPER_WEIGHTS),
                             help="weights of flip, noise, occlusion in the label (paper: equal)"),
    "seed": Key("int", default=0, help="seed of the noise draws"),
    "forward_batch": Key(int_or_auto, default="auto",
                         help="perturbed images per forward call; auto = 32 on CPU, 256 on CUDA"),
    "channels_last": Key(bool_or_auto, default="auto",
                         help="run the forwards in channels-last memory format; auto = on CPU"),
    "occlusion": Key("str", default="incremental", choices=OCCLUSION_PATHS,
                     help="incremental = recompute only where each occluded cell reaches (labels within "
                          "1e-5 of full), full = one full forward per occluded copy"),
    "fold_affine": Key("bool", default=True,
                       help="fold batch norms / affines into the layer before them in the label forwards "
                            "(labels within 1e-6, faster)"),
    "precision": Key("str", default="auto", choices=PRECISIONS,
                     help="precision of the label forwards: auto = fp16 autocast on CUDA, fp32 on CPU; "
                          "bf16 = faster on CPUs with AMX/AVX-512 BF16, labels change (docs/method.md#bf16)"),
}

#: the paper's constants of the labels (what a labels meta file records as ``label_settings``)
PAPER_CONSTANTS = ("alphas", "noise_count", "noise_model", "mpx", "component_weights", "seed")
#: option names whose keyword argument in ``compute_pseudo_labels`` / ``label_settings_key`` differs
_ARGUMENT = {"component_weights": "weights", "fold_affine": "fold"}

#: where the labels stage config holds each option (the constants under ``dataset.``; the seed is the
#: stage's common ``seed`` key)
STAGE_KEYS = {name: (f"dataset.{name}" if name in ("alphas", "noise_count", "mpx", "noise_model",
                                                    "component_weights") else name)
              for name in LABEL_OPTIONS}


def label_options(options: Mapping | None, source: str) -> dict:
    """A mapping of label options (any subset of ``LABEL_OPTIONS``) validated, with every default
    filled. FroqError ``"<source>: <key>: <reason>"`` for a bad value or an unknown key."""
    return validate(dict(options or {}), LABEL_OPTIONS, source)


def stage_options(cfg: Mapping) -> dict:
    """The label options of a validated labels-stage config, by option name (``STAGE_KEYS``)."""
    return {name: get_dotted(cfg, key) for name, key in STAGE_KEYS.items()}


def compute_arguments(options: Mapping) -> dict:
    """Label options (``label_options`` output, ``mpx`` resolved) as the keyword arguments of
    ``baselineFIQA.labels.compute_pseudo_labels``."""
    return {_ARGUMENT.get(k, k): v for k, v in options.items()}


def key_arguments(options: Mapping) -> dict:
    """Label options as the keyword arguments of ``baselineFIQA.cache.label_settings_key`` (all but
    ``forward_batch``, a speed knob that changes no number)."""
    out = compute_arguments(options)
    out.pop("forward_batch", None)
    return out


def output_columns(options: Mapping) -> tuple[str, ...]:
    """The labels CSV's columns (``path`` first) for label options with ``mpx`` resolved
    (``baselineFIQA.labels.label_columns``)."""
    return label_columns(LabelSettings(alphas=options["alphas"], mpx=options["mpx"],
                                       weights=options["component_weights"], noise_model=options["noise_model"]))
