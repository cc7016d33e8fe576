"""What is refused before any work starts (issue 13, faults 5 and 8): config rules, writable locations,
splits; one-line errors and exit codes; writes that fail leave nothing that looks complete. No Ray."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bidpm.config import ConfigError, load_config, metric_problem
from bidpm.prechecks import check_job, location_problems, storage_failure, writable_problem

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _err(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg, msg                          # a user error is one line
    return msg


# --- config rules (at load) ----------------------------------------------------------------------
@pytest.mark.parametrize("override, words", [
    ("tune.metric=val/ssim", ["tune.metric", "'val/ssim'", "val/ssim_mean"]),
    ("tune.metric=test/ssim_mean", ["tune.metric", "not a metric that is reported"]),
    ("train.checkpoint_score=val/ssim_meen", ["train.checkpoint_score", "val/ssim_mean"]),
    ("tracking.promote_metric=val/ssim_mean", ["tracking.promote_metric", "test split"]),
])
def test_metric_names_no_result_carries_are_refused(override, words):
    msg = _err(override)
    assert all(w in msg for w in words), msg


def test_metric_names_that_are_reported_pass():
    for name in ("val/ssim_mean", "val/bwd_psnr_std", "val/images", "train/loss", "train/loss/total", "epoch"):
        assert metric_problem(name, "val") is None, name
    for name in ("test/ssim_mean", "test/fwd_vol_ssim_mean", "test/bwd_hu_mae_std", "test/fwd_hu25_ms_ssim_mean"):
        assert metric_problem(name, "test") is None, name
    load_config(None, ["tune.metric=val/mae_mean", "tune.mode=min", "train.checkpoint_score=train/loss"])


def test_metric_schema_is_the_evaluations():
    from bidpm.config import summary_keys
    from bidpm.evaluation import summary_keys as evaluation_keys

    assert summary_keys("val") == evaluation_keys("val") and summary_keys("test") == evaluation_keys("test")


def test_batch_of_one_with_unpaired_rows_is_refused():
    msg = _err("train.batch_size=1", "data.pairing_ratio=0.5")
    assert "train.batch_size=1" in msg and ">= 2" in msg
    _err("train.batch_size=1", "study.methods=[{label: RF, name: rf}]", "study.pairing_ratios=[1.0, 0.1]")
    load_config(None, ["train.batch_size=1"])                                        # all paired: fine
    load_config(None, ["train.batch_size=1", "study.pairing_ratios=[1.0, 0.1]"])     # no study rows: unused


@pytest.mark.parametrize("uri, words", [
    ("ftp://host/x", "scheme ftp:// is not a tracking store"),
    ("/tmp/mlruns", "bare path"),
    ("mlruns", "bare path"),
    ("file:///tmp/mlruns", "scheme file://"),
    ("sqlite://x.db", "three slashes"),
    ("http://", "no host"),
])
def test_unsupported_tracking_uris_are_refused_at_load(uri, words):
    msg = _err(f"tracking.tracking_uri={uri}")
    assert "tracking.tracking_uri" in msg and words in msg, msg


def test_supported_tracking_uris_pass(monkeypatch):
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.org", "sqlite:///x.db", "sqlite:////abs/x.db",
                "postgresql+psycopg2://u@h/db", "databricks"):
        assert load_config(None, [f"tracking.tracking_uri={uri}"]).mlflow_uri == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x")
    assert "MLFLOW_TRACKING_URI" in _err()                  # where the value came from


def test_validation_errors_are_one_line_with_every_field():
    msg = _err("model.chanels=3", "train.epochs=0")
    assert "model.chanels: unknown key" in msg and "train.epochs:" in msg and "; " in msg


# --- locations and splits (per job) --------------------------------------------------------------
def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"output_dir={tmp_path / 'out'}", *extra])


def test_writable_locations_pass_and_are_created(tmp_path):
    cfg = _cfg(tmp_path)
    check_job(cfg, "tune_steps")
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").glob(".bidpm-write-probe-*"))


@pytest.mark.parametrize("override, setting", [
    ("output_dir={file}/out", "output_dir"),
    ("train.storage_path={file}/runs", "train.storage_path"),
    ("data.shards_dir={file}/shards", "data.shards_dir"),
    ("tracking.tracking_uri=sqlite:///{file}/db/mlflow.db", "tracking store"),
])
def test_a_location_under_a_file_is_refused_naming_the_setting(tmp_path, override, setting):
    """Tests may run as root, where chmod stops no write: a folder under a regular file can never exist."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cfg = load_config(None, [f"output_dir={tmp_path / 'ok'}", override.format(file=blocker)])
    with pytest.raises(ConfigError) as e:
        check_job(cfg, "tune_steps")
    msg = str(e.value)
    assert "\n" not in msg and setting in msg and f"{blocker} is a file, not a folder" in msg and "fix: set" in msg
    assert msg.count("is a file") == 1                      # locations under the failed one are not repeated


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders (covered by the file and ENOSPC cases)")
def test_a_read_only_output_dir_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "cannot write there" in (writable_problem(str(ro)) or "")
        with pytest.raises(ConfigError, match="output_dir .*cannot write there"):
            check_job(load_config(None, [f"output_dir={ro}"]), "train")
    finally:
        ro.chmod(0o700)


def test_a_full_location_is_refused(tmp_path, monkeypatch):
    """A full disk (ENOSPC at the probe's write): the same one-line refusal."""
    import tempfile

    real = tempfile.NamedTemporaryFile

    class Full:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", Full)
    problems = location_problems(_cfg(tmp_path), "train")
    assert problems and "No space left on device" in problems[0] and problems[0].startswith("output_dir")


def test_empty_validation_or_test_split_is_refused_for_training_jobs(tmp_path):
    with pytest.raises(ConfigError, match="validation split is empty.*val_fraction=0"):
        check_job(_cfg(tmp_path, "data.split.val_fraction=0"), "tune_steps")
    with pytest.raises(ConfigError, match="val_subjects is not"):
        check_job(_cfg(tmp_path, "data.split.train_subjects=[a]", "data.split.test_subjects=[b]"), "train")
    with pytest.raises(ConfigError, match="test split is empty"):
        check_job(_cfg(tmp_path, "data.split.test_fraction=0"), "study")
    check_job(_cfg(tmp_path, "data.split.test_fraction=0", "tracking.register_best=false"), "tune_steps")
    check_job(_cfg(tmp_path, "data.split.val_fraction=0"), "prepare_data")        # ingest alone needs no val


def test_storage_failure_names_the_location_from_a_wrapped_error():
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("Training failed: worker 0 raised") from e
    except RuntimeError as outer:
        msg = storage_failure(outer, "train.storage_path", "/data/runs")
    assert msg and "train.storage_path /data/runs" in msg and "No space left" in msg and "rerun" in msg
    assert storage_failure(RuntimeError("CUDA out of memory"), "train.storage_path", "/x") is None


def test_an_outage_wrapped_by_tune_is_still_an_outage():
    """Seen in a suite run: the server died while ``on_trial_result`` logged, Tune re-raised the callback's
    TrackingUnavailable as ``TuneError(traceback.format_exc())`` and the job exited 1 instead of 75."""
    import traceback

    from ray.tune.error import TuneError

    from bidpm.tracking import TrackingUnavailable, outage_in

    original = TrackingUnavailable("the MLflow tracking server http://h:5000 stopped answering while logging")
    try:
        try:
            raise original
        except Exception:                              # what tune_controller._on_result does
            raise TuneError(traceback.format_exc())
    except TuneError as wrapped:
        assert outage_in(wrapped) is original          # through __context__
        text_only = TuneError(str(wrapped))            # the same text with no chain (re-raised elsewhere)
    found = outage_in(text_only)
    assert isinstance(found, TrackingUnavailable) and str(found) == str(original)
    assert outage_in(TuneError("Traceback ...\nValueError: a bug in a trial")) is None
    assert outage_in(original) is original
    try:
        try:
            raise original
        except Exception:
            raise KeyboardInterrupt                    # Ctrl+C during the outage's clean-up: still exit 130
    except KeyboardInterrupt as ctrl_c:
        assert outage_in(ctrl_c) is None


@pytest.mark.parametrize("error, says", [
    ("API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed with error code 503 != 200", "start its database"),
    # seen in clean-clone run M: the server worker was still retrying the stopped PostgreSQL when the client gave up
    ("API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool(host='h', "
     "port=5000): Max retries exceeded (Caused by ReadTimeoutError(\"Read timed out. (read timeout=20)\"))",
     "did not answer within tracking.http_timeout_s=20 s"),
    ("API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool(host='h', "
     "port=5000): Max retries exceeded (Caused by NewConnectionError('Connection refused'))", "start the server again"),
])
def test_an_outage_says_what_to_start_by_how_the_request_failed(error, says):
    """Run O: the server's 503 reached the callback as a RestException and the driver exited 1, not 75."""
    from bidpm.tracking import unavailable

    msg = str(unavailable(load_config(None, ["tracking.http_timeout_s=20"]), RuntimeError(error), "logging metrics"))
    from mlflow.exceptions import RestException

    from bidpm.tracking.store import is_outage

    down = RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "(psycopg.OperationalError) refused"})
    assert is_outage(down) and "start its database" in str(unavailable(load_config(None, []), down, "logging"))
    assert says in msg and "\n" not in msg and sum(w in msg for w in ("start its database", "did not answer",
                                                                    "start the server again")) == 1, msg


# --- the command-line front ---------------------------------------------------------------------
def _run(main, capsys):
    from bidpm.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    return e.value.code, capsys.readouterr().err


def test_user_errors_exit_2_in_one_line(capsys):
    def main(argv):
        raise ConfigError("tune.metric: 'x' is not a metric")

    code, err = _run(main, capsys)
    assert code == 2 and err == "error: tune.metric: 'x' is not a metric\n"


def test_resumable_stops_exit_75_with_the_rerun_command(capsys, monkeypatch):
    from bidpm.tune.watchdog import StudyStalled

    monkeypatch.setattr("sys.argv", ["jobs/tune_steps.py", "--config", "my config.yaml", "tune.num_samples=2"])

    def main(argv):
        raise StudyStalled("study 'q' stopped: waited for 1 CPU")

    code, err = _run(main, capsys)
    assert code == 75 and err.count("\n") == 1
    assert err.endswith("rerun the same command: python jobs/tune_steps.py --config 'my config.yaml' tune.num_samples=2\n")


def test_interrupt_exits_130_and_bugs_keep_their_traceback(capsys):
    def stop(argv):
        raise KeyboardInterrupt()

    code, err = _run(stop, capsys)
    assert code == 130 and "rerun the same command" in err

    def bug(argv):
        raise ZeroDivisionError("bug")

    from bidpm.cli import run_main

    with pytest.raises(ZeroDivisionError):
        run_main(bug, [])


# --- writes that fail leave nothing that looks complete --------------------------------------------
def test_atomic_write_that_fails_leaves_no_temp_and_no_target(tmp_path):
    """The rename fails (a folder sits where the file goes): the temp file is removed, nothing else appears."""
    from bidpm.io import storage

    (tmp_path / "manifest.json" / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(tmp_path / "manifest.json"), b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"] and (tmp_path / "manifest.json").is_dir()


def test_manifest_write_that_fails_is_a_data_error_and_drops_the_version(tmp_path, monkeypatch):
    from bidpm.data import shards
    from bidpm.io import storage
    from bidpm.data.manifest import DataError

    version = tmp_path / "abc" / "v1"
    (version / "train").mkdir(parents=True)
    (version / "train" / "s.parquet").write_bytes(b"x")

    def full(location, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "write_bytes_atomic", full)
    with pytest.raises(DataError, match=r"cannot write .*manifest.json .*No space.*no manifest written.*data.shards_dir"):
        shards._write_record(str(version / "manifest.json"), b"{}", str(version))
    assert not version.exists()


def test_checkpoint_write_that_fails_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import torch

    from bidpm.train import checkpoint

    def full(obj, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos; PytorchStreamWriter failed "
                           "writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "ckpt" / "state.pt"
    target.parent.mkdir()
    with pytest.raises(OSError, match=r"cannot write checkpoint file .*state.pt.*free space"):
        checkpoint._atomic_write(target, lambda p: torch.save({}, p))
    assert list(target.parent.iterdir()) == []               # no state.pt, no state.pt.tmp
