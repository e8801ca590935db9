"""The evaluation settings, declared once: every key of an evaluation (``froq evaluate``'s config,
``froq table``'s per-model evaluation, ``run.sh``'s LFW evaluation, the API) is validated by
``SCHEMA``, and ``evaluation_settings`` fills the defaults of a partial mapping, so no caller
re-defaults a key.
"""

from __future__ import annotations

from typing import Mapping

from froq.core.config import Key, device_name, float_list, int_at_least, number_between, positive_int, validate

discard_limit = number_between(0, 1, example="0.3")


def discard_limits(value):
    """Validator: one discard limit in (0, 1), or a non-empty list of them (the first is the primary
    one). A single number stays a number."""
    if isinstance(value, list):
        if not value:
            raise ValueError("must be a number in (0, 1) or a non-empty list of them, e.g. [0.3, 0.2]")
        out = [discard_limit(v) for v in value]
        if len(set(out)) != len(out):
            raise ValueError(f"lists a limit twice (got {value!r})")
        return out
    return discard_limit(value)


def fmr_list(value):
    """Validator: one or more target FMRs in (0, 1]."""
    values = float_list(value)
    if any(not (0 < v <= 1) for v in values):
        raise ValueError(f"every FMR must be in (0, 1] (got {value!r})")
    return values


SCHEMA = {
    "face_recognition_configs": Key("any", help="list of FR configs, e.g. [configs/fr/dlib_resnet.yaml]"),
    "benchmarks": Key("list", help="list of {name, type, ...} benchmark entries"),
    "qualities": Key("dict", default={}, help="method -> per-image CSV path template"),
    "fmr": Key(fmr_list, default=[1e-3], help="target FMR(s) of the fixed threshold"),
    "discard_limit": Key(discard_limits, default=[0.3, 0.2],
                         help="pAUC upper discard fraction, or a list (first = primary; all in table.md)"),
    "threshold": Key("str", default="fixed", choices=("fixed", "per_step"),
                     help="fixed once on all impostors (ISO) or recomputed at every discard step"),
    "discard_over": Key("str", default="mated", choices=("mated", "all"),
                        help="discard genuine pairs only (ISO) or all pairs by quality"),
    "pauc_normalisation": Key("str", default="start", choices=("start", "raw", "best"),
                              help="table value: pAUC / (limit·FNMR(0)), raw pAUC, or pAUC minus the oracle's"),
    "bootstrap": Key(int_at_least(0), default=1000, help="bootstrap resamples for the intervals (0 = none)"),
    "bootstrap_unit": Key("str", default="auto", choices=("auto", "identities", "pairs"),
                          help="resample identities when known (auto) or pairs"),
    "bootstrap_seed": Key("int", default=0, minimum=0),
    "confidence": Key(number_between(0.5, 1, example="0.95"), default=0.95,
                      help="level of the bootstrap percentile interval"),
    "pair_quality": Key("str", default="min", choices=("min", "mean", "product")),
    "random_seeds": Key(positive_int, default=10, help="seeds of the random reference"),
    "missing_quality": Key("str", default="error", choices=("error", "min"),
                           help="image absent from a quality CSV: error, or give it the CSV's lowest quality"),
    "outdir": Key("path", help="output folder"),
    "device": Key(device_name, default="auto"),
    "batch_size": Key(positive_int, default=64),
    "num_workers": Key("int", default=0, minimum=0),
    "cache": Key("bool", default=True, help="cache embeddings (see cache_dir)"),
    "cache_dir": Key("path", default=None, help="embedding cache folder (default: outdir/cache)"),
    "plots": Key("bool", default=True, help="write edc_<benchmark>_<model>.png"),
}

#: the primary discard limit (the spec's pAUC over d in [0, 0.3]) and the official README's second
DISCARD_LIMITS = SCHEMA["discard_limit"].default


def evaluation_settings(cfg: Mapping, source: str) -> dict:
    """A copy of an evaluation config validated by ``SCHEMA`` with every default filled (private
    ``_`` keys kept). FroqError ``"<source>: <key>: <reason>"`` for a bad or unknown key."""
    return validate(dict(cfg), SCHEMA, source)


def as_limits(value) -> list[float]:
    """A validated ``discard_limit`` value as a list (first = primary)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
