"""Data preparation, before any FR model runs: face alignment of photos (``preparation.align``),
BSRGAN-style degradations (``preparation.degradations``), the calibration-set builder
(``preparation.calibration``) and the identity split / calibration subsampling
(``preparation.split``)."""
