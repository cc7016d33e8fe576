"""bidpm: Bi-DPM (bi-directional Discrete Process Matching) on Ray, Optuna and MLflow.

Core maths (``model``, ``method``, ``losses``, ``metrics``, ``io``) imports only torch, numpy and
nibabel; orchestration (``data.shards``, ``train``, ``tune``, ``tracking``) builds on it.
"""

__version__ = "0.1.0"
