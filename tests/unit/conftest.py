"""Fixtures for the unit tests (no Ray)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64_default():
    """Exact comparisons in float64; restored so other test modules keep float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
