"""Probe training: prompts per concept, cached activations, one-matrix probe fitting, calibration."""
