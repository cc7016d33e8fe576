"""How much memory the GPU of a node type has: by Ray accelerator type, or by cloud instance type.

Vendors state memory in decimal GB (an A10G's "24 GB" is 22.35 GiB of which the driver shows ~22.5 GB);
``usable_gib`` turns a card's GB into the GiB a training step may plan for (``memory.HEADROOM``).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from .memory import GIB, HEADROOM

__all__ = ["ACCELERATOR_GB", "INSTANCE_GPUS", "accelerator_gb", "instance_gpu", "usable_gib"]

# Ray's ``accelerator_type:<name>`` resource (ray.util.accelerators) -> the card's memory, GB
ACCELERATOR_GB = {"T4": 16, "V100": 16, "A10G": 24, "L4": 24, "A100": 40, "A100-40G": 40, "A100-80G": 80, "L40S": 48,
                  "H100": 80, "H200": 141, "B200": 180}
# cloud instance type pattern -> (accelerator type, GB) of the GPUs it carries
INSTANCE_GPUS = [(r"^g5\.", "A10G"), (r"^g6\.", "L4"), (r"^g6e\.", "L40S"), (r"^g4dn\.", "T4"), (r"^p3\.", "V100"),
                 (r"^p4d\.", "A100-40G"), (r"^p4de\.", "A100-80G"), (r"^p5\.", "H100"), (r"^p5e\.", "H200"),
                 (r"^g2-", "L4"), (r"^a2-highgpu", "A100-40G"), (r"^a2-ultragpu", "A100-80G"), (r"^a3-", "H100")]


def accelerator_gb(name: str) -> Optional[float]:
    """GB of Ray accelerator type ``name`` (case-insensitive), None when unknown."""
    table = {k.lower(): v for k, v in ACCELERATOR_GB.items()}
    gb = table.get(name.lower())
    return float(gb) if gb is not None else None


def instance_gpu(instance_type: str) -> Optional[tuple[str, float]]:
    """(accelerator type, GB) of a cloud instance type (``g5.2xlarge`` -> A10G, 24), None when unknown."""
    for pattern, acc in INSTANCE_GPUS:
        if re.match(pattern, instance_type):
            return acc, float(ACCELERATOR_GB[acc])
    return None


def smallest_accelerator_gb(resource_names: Iterable[str]) -> Optional[tuple[str, float]]:
    """The smallest known card among Ray resource names ``accelerator_type:<name>``."""
    found = [(n.split(":", 1)[1], accelerator_gb(n.split(":", 1)[1])) for n in resource_names
             if n.startswith("accelerator_type:")]
    known = [(n, gb) for n, gb in found if gb is not None]
    return min(known, key=lambda x: x[1]) if known else None


def usable_gib(gpu_memory_gb: float) -> float:
    """GiB a step may plan to use on a card of ``gpu_memory_gb`` GB (decimal): ``HEADROOM`` of it."""
    return gpu_memory_gb * 1e9 / GIB * HEADROOM
