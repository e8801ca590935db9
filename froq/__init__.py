"""Shared plumbing of the FROQ toolkit: configs, image folders, atomic I/O, devices, CLI errors.

Every stage (baselineFIQA, observer, evaluation, calibration_dataset) uses these pieces;
nothing in here knows about a particular FR model or quality method.
"""

__version__ = "0.1.0"
