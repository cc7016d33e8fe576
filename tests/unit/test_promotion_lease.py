"""The promotion lease's wait is bounded on every path, including the one where MLflow's SQL store
reports the taken name as missing (released between its failed insert and its read-back)."""

from __future__ import annotations

import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from bidpm.tracking import TrackingError
from bidpm.tracking.promotion import promotion_lock


class _Flapping:
    """A registry where every create of the lease meets a lease freed just before the read-back."""

    def __init__(self, succeed_after: int | None = None) -> None:
        self.creates, self.succeed_after = 0, succeed_after

    def create_registered_model(self, name, tags=None, description=None):
        self.creates += 1
        if self.succeed_after is not None and self.creates > self.succeed_after:
            return None
        raise MlflowException(f"Registered Model with name={name} not found", error_code=RESOURCE_DOES_NOT_EXIST)

    def get_registered_model(self, name):
        raise MlflowException("not found", error_code=RESOURCE_DOES_NOT_EXIST)

    def delete_registered_model(self, name):
        pass


def test_a_lease_freed_in_between_is_retried_and_then_taken():
    client = _Flapping(succeed_after=3)
    with promotion_lock(client, "m", wait_s=5.0) as holder:
        assert holder
    assert client.creates == 4


def test_a_lease_freed_in_between_without_end_stops_at_the_deadline():
    client = _Flapping()
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=r"holds the lease 'm.promotion-lock' for more than 0 s"):
        with promotion_lock(client, "m", wait_s=0.3):
            pass
    assert 0.3 <= time.monotonic() - t0 < 5.0 and client.creates > 1
