"""Shared plumbing of the FROQ toolkit: configs, the image reader, the one per-image runner, atomic
I/O, devices, stage command-line helpers and errors.

Every room above (models, data preparation, stages, methods, evaluation, the ``froq`` API and CLI)
uses these pieces; nothing in here imports a model, stage or method package (``tests/test_imports.py``
enforces it).
"""
