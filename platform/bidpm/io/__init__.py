"""Bytes in and out: ``nifti`` (decode safely, reorient to RAS, save atomically; numpy + nibabel),
``nifti_guard`` (what an untrusted file may make a reader allocate),
``storage`` (local paths and object-store URIs through pyarrow filesystems, atomic writes) and
``checkpoints`` (a trial checkpoint's location with its scheme, and a local copy of it).

Nothing is imported here: ``bidpm.io.storage`` loads pyarrow only (the config checks locations with
it), ``bidpm.io.nifti`` numpy and nibabel.
"""
