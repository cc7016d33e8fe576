"""How a trial runs and stops safely, for both runners (``bidpm.search``, ``bidpm.study``) and knowing
neither: ``experiment`` (checks before any trial, the MLflow parent run, one exit path), ``watchdog``
(no silent waits for resources), ``mlflow`` (a child run per trial), ``reporter`` (the live table),
``names`` (what a trial is called on disk and in Ray)."""
