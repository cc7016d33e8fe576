"""Data scaling: how quality grows with training subjects (``fit``: a saturating power law fitted
robustly, with bootstrap intervals resampled by subject and seed, an out-of-sample check and the subjects
needed for a target). Core maths: numpy + scipy only, no Ray or MLflow."""
