"""Memory planning before launch: a training step's peak GPU memory per worker, estimated without a GPU.

``trace`` measures a step on fake tensors, ``memory`` adds what lives beside it (Adam, EMA, DDP, workspaces),
``gpus`` knows the cards of the cluster's node types, ``preflight`` turns a job's cases into a plan, the
check that ``train``/``tune_steps``/``study`` make before any trial, and the fixes. Core: imports torch
only (no Ray, no MLflow); ``bidpm plan`` (``commands/plan.py``) is the user's view.
"""
