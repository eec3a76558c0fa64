"""Numbers about runs: ``evaluate``, bootstrap statistics, paired comparison of runs, explanation
metrics (ROUGE, BLEU, BERTScore) and fitting a calibration.
"""
