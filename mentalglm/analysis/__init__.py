"""A post through a backend into a predictions file: the Analyzer, the run record that refuses mixed
settings, redaction, grounding of quoted evidence, and applying a fitted calibration.
"""
