"""Calibration of model outputs and the study priority score."""
