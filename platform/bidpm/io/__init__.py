"""NIfTI I/O: decode safely, reorient to RAS, save atomically. Imports only numpy and nibabel."""

from .nifti import (
    NiftiError,
    Volume,
    decode_nifti,
    from_ras,
    load_nifti,
    read_volume,
    save_nifti,
)

__all__ = ["NiftiError", "Volume", "decode_nifti", "from_ras", "load_nifti", "read_volume", "save_nifti"]
