"""Face-recognition backbones by registry name, their weight loaders and FR configs.

Use ``load_fr_model(config_path)`` to get a ready model with its preprocessing, or
``create_model(arch, weights)`` for the bare network. See ``registry.list_models()``.
"""

from face_recognition_model.registry import create_model, list_models, register_model  # noqa: F401
from face_recognition_model.loading import FRModel, load_fr_config, load_fr_model  # noqa: F401
