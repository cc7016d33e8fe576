"""The ``tune_steps`` search: what it proposes and what it found. ``space`` (the Bi-DPM search space,
Optuna define-by-run; pure), ``run`` (``run_search`` -> ``SearchResult``), ``best`` (the best config and
the registry hand-off), ``table`` (the live and final trial tables), ``plot`` (the summary figure)."""
