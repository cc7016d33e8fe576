"""Studies: methods x pairing ratios x seeds x training fractions, every cell a parallel Tune trial.
``cells`` (what a cell is, its config, grids and score file; the checks before training), ``run``
(``run_study`` -> ``StudyResult``), ``score`` (one cell: train, score, record), ``tables``/``figures``/
``report`` (the paper's Tables 1-2, Figures 5 and 7, significance, cost), ``progress`` (console lines)."""
