"""The training pipeline: config → trained MONAI network → evaluated, calibrated model bundle."""
