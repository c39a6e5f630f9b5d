"""Measurement: calibration data, per-layer statistics and output sensitivity."""
