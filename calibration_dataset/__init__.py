"""calibration_dataset package."""
