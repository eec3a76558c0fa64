"""The expert-review round trip: predictions out to Label Studio, reviews back in, agreement measured.

- :mod:`~mentalglm.review.label_studio`: the labelling config, the task export (pre-annotations,
  evidence highlights, review order) and the reading of Label Studio's JSON export;
- :mod:`~mentalglm.review.agreement`: inter-rater agreement (Cohen's κ, Krippendorff's α),
  model-vs-expert agreement and mean ratings with intervals;
- :mod:`~mentalglm.review.gold`: reviewed labels as gold (``evaluate --gold``) and corrected
  training records (``train``).

Nothing here is imported by ``core``; like every other part it imports ``core`` only.
"""
