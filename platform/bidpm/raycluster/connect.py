"""Connecting a job's driver to Ray, the same way for every ``jobs/*.py``.

Where the driver runs decides what it must ship:

* outside ``ray job submit`` (a laptop, ``RAY_ADDRESS=ray://...``, a head node shell): the driver
  passes ``runtime_env={"py_modules": [<this package>]}``, so cluster nodes need only the
  dependencies installed (a working-dir upload alone would not put ``platform/`` on the workers' path);
* inside ``ray job submit``: the job supervisor hands the entrypoint its job config (runtime env
  included) in the ``RAY_JOB_CONFIG_JSON_ENV_VAR`` environment variable, and ``ray.init`` *merges* the
  driver's runtime env into it (``ray/_private/worker.py``). When that job env already has
  ``py_modules`` (``cluster/runtime_env.yaml`` does), a second ``py_modules`` is a conflict and
  ``ray.init`` raises, so the driver passes none and uses the job's. When the job env has no
  ``py_modules`` (e.g. only ``--working-dir .``), the package is still shipped by the driver.

Reading that variable is the one environment read here: it is Ray's own marker of a job entrypoint,
read once at connect time, not a setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the bidpm package, shipped whole
# ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR (private module: name copied, not imported)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_runtime_env(environ: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """The runtime env of the ``ray job submit`` job this process is the entrypoint of; None outside a job."""
    raw = environ.get(JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}                  # unreadable: treat as a job without py_modules (Ray itself would fail first)


def driver_runtime_env(environ: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """What ``ray.init`` should get as ``runtime_env``: None when the job already ships ``py_modules``."""
    job_env = job_runtime_env(environ)
    if job_env is not None and job_env.get("py_modules"):
        return None
    return {"py_modules": [str(PACKAGE_DIR)]}


def connect_ray(*, log_to_driver: bool = False) -> None:
    """Join RAY_ADDRESS / the job's cluster, or start a local Ray, with ``bidpm`` on every worker.

    log_to_driver: stream the workers' stdout/stderr to this process (trial errors reach Tune's
    table either way, so the study keeps it off; ``jobs/train.py`` shows the training loop's lines).
    No-op when Ray is already initialised (tests, notebooks).
    """
    import ray

    if ray.is_initialized():
        return
    runtime_env = driver_runtime_env(os.environ)
    if runtime_env is None:
        ray.init(log_to_driver=log_to_driver)
    else:
        ray.init(runtime_env=runtime_env, log_to_driver=log_to_driver)
