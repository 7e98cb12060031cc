"""Calibration and validation of the cost models against published training runs."""
