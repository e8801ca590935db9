"""FR configs (YAML) → a ready model with its preprocessing and identity.

An FR config::

    model:
      arch: adaface_ir_101          # a registry name (face_recognition_model.list_models())
      weights: weights/adaface_ir101_webface12m.ckpt   # path | random | null (packaged default)
      source: https://...           # optional: where the official weights are published
    preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [2, 1, 0]}
    alignment: arcface112           # optional: the face template (face_recognition_model.templates)

Relative weight paths are resolved against the current directory first, then the config's folder.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from face_recognition_model import registry
from face_recognition_model.templates import AlignmentTemplate, template_from_config
from froq.core.config import Key, load_config
from froq.core.device import resolve_device
from froq.core.errors import FroqError
from froq.core.images import Preprocess
from froq.core.io import fingerprint, sha256_file

log = logging.getLogger(__name__)

FR_SCHEMA = {
    "model.arch": Key("str", help="a registry name, e.g. adaface_ir_101 or dlib_resnet"),
    "model.weights": Key("any", default=None),
    "model.source": Key("any", default=None),
    "model.kwargs": Key("dict", default={}),
    "preprocess": Key("dict", default={}),
    "alignment": Key("any", default=None,
                     help="face template: a name (dlib150, arcface112, sphereface96x112) or "
                          "{size: [height, width], points: five [x, y]}; default: from preprocess.size"),
}


@dataclass
class FRModel:
    """A loaded FR model: the network (eval mode, on ``device``), its preprocessing and identity."""

    network: torch.nn.Module
    preprocess: Preprocess
    arch: str
    weights: str | None
    weights_sha256: str | None
    device: torch.device
    config_path: str = ""
    config: dict = field(default_factory=dict)
    embedding_dim: int | None = None  # known after one forward (set by the stage check)
    params_sha256: str | None = None  # without a weights sha256: set by the first identity()

    def identity(self) -> dict:
        """JSON-able provenance: architecture, model kwargs, weights path and sha256 (without one,
        e.g. random weights: ``params_sha256``, the sha256 of the parameters), preprocessing, config."""
        if self.weights_sha256 is None and self.params_sha256 is None:
            self.params_sha256 = parameters_sha256(self.network)
        return {"arch": self.arch, "kwargs": (self.config.get("model") or {}).get("kwargs") or {},
                "weights": self.weights, "weights_sha256": self.weights_sha256,
                "params_sha256": self.params_sha256, "preprocess": self.preprocess.to_config(),
                "config": self.config_path}

    def layout(self):
        """The parts the network declares (``face_recognition_model.layout.ModelLayout``: embedding
        tail, residual stages, batch norms, quality head, a reason for each absent one)."""
        from face_recognition_model.layout import layout_of

        return layout_of(self.network)

    def embedding_size(self) -> int:
        """Length D of the embedding (known from the load-time check, else one blank forward)."""
        if self.embedding_dim is None:
            h, w = self.preprocess.size
            self.embedding_dim = int(self.embed(torch.zeros(1, 3, h, w)).shape[1])
        return self.embedding_dim

    def alignment(self) -> AlignmentTemplate | None:
        """The face template of the FR config's ``alignment`` key (default: from
        ``preprocess.size``; None when neither names one)."""
        return template_from_config(self.config.get("alignment"), self.preprocess.size,
                                    self.config_path or "FR config")

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (B, 3, H, W) → un-normalised embeddings (B, D) as float32 on CPU."""
        out = self.network(batch.to(self.device, non_blocking=True))
        return out.float().cpu()


def parameters_sha256(network: torch.nn.Module) -> str:
    """A network → hex sha256 of its state dict (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def network_identity(identity: Mapping) -> dict | None:
    """An ``FRModel.identity()`` record (maybe read from a file) → the part that fixes the network's
    outputs (arch, kwargs, preprocessing, weights or parameters sha256), or None when the record
    cannot tell (no hash of the weights, or written before FROQ recorded kwargs and parameters)."""
    if not (identity.get("weights_sha256") or identity.get("params_sha256")) or "kwargs" not in identity:
        return None
    return {k: identity.get(k) for k in ("arch", "kwargs", "preprocess", "weights_sha256", "params_sha256")}


def _described(identity: Mapping, keys: Sequence[str]) -> str:
    arch, weights = identity.get("arch"), identity.get("weights")
    sha, params = identity.get("weights_sha256"), identity.get("params_sha256")
    text = (f"{repr(arch) if arch else 'an unrecorded model'} with weights {weights or 'random'} "
            f"({f'sha256 {sha[:12]}' if sha else f'parameters sha256 {params[:12]}' if params else 'content not recorded'})")
    return "".join([text, *(f", {k} {identity[k] if k in identity else 'not recorded'}" for k in keys)])


def identity_difference(recorded: Mapping, current: Mapping) -> str | None:
    """Two ``FRModel.identity()`` records (``recorded``: the one an input file names) → None when
    both are known to be the same network (``network_identity``; a record of an earlier FROQ, without
    ``kwargs``, is compared on its weights sha256, arch and preprocessing), else one phrase naming both, e.g.
    "'iresnet50' with weights random (content not recorded), but this model is 'adaface_ir_18' ..."."""
    if "kwargs" not in recorded and recorded.get("weights_sha256"):
        # written before FROQ recorded model kwargs: the weights' sha256 is the strong check
        log.warning("%s names no model kwargs (written by an earlier FROQ): taken as this model's %s",
                    recorded.get("weights"), current.get("kwargs"))
        recorded = {**recorded, "kwargs": current.get("kwargs")}
    theirs, mine = network_identity(recorded), network_identity(current)
    if theirs is not None and mine is not None and fingerprint(theirs) == fingerprint(mine):
        return None
    keys = [k for k in ("kwargs", "preprocess")
            if k not in recorded or fingerprint(recorded[k]) != fingerprint(current.get(k))]
    return f"{_described(recorded, keys)}, but this model is {_described(current, keys)}"


def load_fr_config(path: str | Path, overrides: Sequence[str] | None = None) -> dict:
    """Read and validate an FR config; returns the dict (with ``_source``)."""
    cfg = load_config(path, FR_SCHEMA, overrides)
    try:
        registry.get_builder(cfg["model"]["arch"])  # fail early on an unknown name
    except FroqError as exc:
        raise FroqError(f"{path}: model.arch: {exc}") from None
    pre = Preprocess.from_config(cfg["preprocess"], str(path))
    template_from_config(cfg.get("alignment"), pre.size, str(path))
    return cfg


def alignment_of(cfg: dict, source: str = "FR config") -> AlignmentTemplate | None:
    """The alignment template of a loaded FR config dict (its ``alignment`` key, else the template
    of its ``preprocess.size``; None when there is none). FroqError for a bad value."""
    pre = Preprocess.from_config(cfg.get("preprocess") or {}, source)
    return template_from_config(cfg.get("alignment"), pre.size, source)


def resolve_weights(cfg: dict) -> str | None:
    """The weights file an FR config points at, or None for random init; FroqError if missing."""
    source = cfg.get("_source", "FR config")
    arch = cfg["model"]["arch"]
    weights = cfg["model"].get("weights")
    if isinstance(weights, str) and weights.lower() == "random":
        log.warning("%s: model.weights is 'random': the network keeps its "
                    "architecture's random initialisation (only meaningful for tests and benchmarks)", source)
        return None
    if weights in (None, "", "default"):
        packaged = registry.default_weights(arch)
        if packaged is None:
            raise FroqError(f"{source}: model.weights is not set and '{arch}' has no packaged "
                            "weights: give the path of the weights file")
        return packaged
    candidates = [Path(weights)]
    if not Path(weights).is_absolute():
        candidates.append(Path(source).parent / weights)
    for cand in candidates:
        if cand.is_file():
            return str(cand)
    where = cfg["model"].get("source")
    hint = f"download the official weights from {where} and put the file there" if where else \
        "put the weights file there or fix model.weights"
    raise FroqError(f"{source}: weights file not found: {weights} — {hint} "
                    f"(or run the stage with --set fr_overrides=[model.weights=PATH])")


def load_fr_model(config: str | Path | dict, device: torch.device | str = "cpu",
                  overrides: Sequence[str] | None = None, hash_weights: bool = True) -> FRModel:
    """FR config (path or loaded dict) → ``FRModel`` on ``device`` in eval mode.

    Raises FroqError for an unknown architecture, a missing weights file (saying where the
    official weights are published) or a checkpoint whose keys/shapes do not match.
    """
    cfg = config if isinstance(config, dict) else load_fr_config(config, overrides)
    source = cfg.get("_source", "FR config")
    preprocess = Preprocess.from_config(cfg.get("preprocess") or {}, source)
    arch = cfg["model"]["arch"]
    weights = resolve_weights(cfg)
    network = registry.create_model(arch, weights, **(cfg["model"].get("kwargs") or {}))
    device = torch.device(device)
    network = network.to(device).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    bad = [name for name, t in [*network.named_parameters(), *network.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FroqError(f"{weights or source}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                        f"(e.g. {bad[0]}): the checkpoint is damaged; download it again")
    digest = sha256_file(weights) if (weights and hash_weights) else None
    return FRModel(network=network, preprocess=preprocess, arch=arch, weights=weights,
                   weights_sha256=digest, device=device, config_path=str(source),
                   config={k: v for k, v in cfg.items() if not k.startswith("_")})


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
    torch.manual_seed(int(cfg["seed"]))  # every stage schema has it (froq.core.stage.COMMON_KEYS)
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
