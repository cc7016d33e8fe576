"""The search's checks that need no trial: an unreachable tracking store stops it before anything runs,
and a finished search is recognised on URI storage. The tiny search itself runs end to end through
``ray job submit`` (test_job_submit.py), which also reruns it in this process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from bidpm import tracking
from bidpm.config import load_config

from tiny import tiny_search  # tests/tiny.py

pytestmark = pytest.mark.integration


def _tiny(tmp_path: Path, *overrides: str):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_search(tmp_path / "out")))
    return load_config(p, list(overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_fails_before_any_trial(tmp_path, ray_session):
    from bidpm.search.run import run_search
    from bidpm.tune.names import experiment_dir

    cfg = _tiny(tmp_path, f"tracking.tracking_uri=http://127.0.0.1:{_free_port()}")
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        run_search(cfg)
    assert not Path(experiment_dir(cfg, cfg.tune.experiment_name)).exists()


def test_finished_study_is_recognised_on_uri_storage(tmp_path):
    """study.json goes through bidpm.io.storage: a search stored under a URI (file:// stands in for
    s3:// / gs://, same pyarrow path) is read back as finished; no Ray needed."""
    from bidpm.io.storage import write_bytes_atomic
    from bidpm.search.run import STUDY_FILE, load_finished
    from bidpm.tune.names import experiment_dir

    cfg = _tiny(tmp_path, f"train.storage_path={(tmp_path / 'store').as_uri()}")
    folder = experiment_dir(cfg, cfg.tune.experiment_name)
    assert folder.startswith("file://") and load_finished(cfg) is None
    (tmp_path / "store" / cfg.tune.experiment_name).mkdir(parents=True)
    record = {"experiment_dir": folder, "rows": [{"trial": "a1", "objective": 0.5}], "best_trial": "a1",
              "best_config_path": None, "parent_run_id": None, "model_version": "3", "promotion": None}
    write_bytes_atomic(folder + "/" + STUDY_FILE, json.dumps(record).encode())
    done = load_finished(cfg)
    assert done is not None and done.reused and done.model_version == "3" and done.rows == record["rows"]
    assert [p.name for p in (tmp_path / "store" / cfg.tune.experiment_name).iterdir()] == [STUDY_FILE]  # no temp left
