"""What the Ray cluster is and has: ``connect`` (how a job's driver joins or starts Ray, with the
package shipped), ``resources`` (what one trial or worker asks for, whether it fits, how many run at
once), ``nodes`` (how many nodes were alive while a job ran)."""

from .connect import connect_ray

__all__ = ["connect_ray"]
