"""Evidence for every concept: the reference corpus, its scan, dashboards, quality cards and calibration."""
