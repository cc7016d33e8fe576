"""The pseudonym salt: where it comes from and how strong real data needs it.

The salt is a secret: with it, anyone holding a list of candidate ids can re-derive every pseudonym.
It never leaves the ingest: ``data.pseudonym_salt`` is excluded from every dump (``Config.to_dict`` /
``to_yaml`` / ``flat``: MLflow params, resolved configs, checkpoints, registered models, Ray trial
configs), which carry only its digest. Give it by a file (``data.pseudonym_salt_file``) or the
environment, never in a YAML file or on a command line (``ps``, ``ray job list`` and RayJobs show those).
"""

from __future__ import annotations

import hashlib
import os

from .base import ConfigError

DEFAULT_SALT = "bidpm"
SALT_ENV = "BIDPM_PSEUDONYM_SALT"
# Real data needs a salt of at least 128 bits: 32 characters, e.g. ``openssl rand -hex 16`` (a BraTS
# pseudonym made with the public default was reversed in milliseconds by hashing candidate ids).
MIN_SALT_CHARS = 32
SALT_FIX = (f"make one with `openssl rand -hex 32 > salt.txt; chmod 600 salt.txt` and pass data.pseudonym_salt_file=salt.txt "
            f"(or export {SALT_ENV}=$(cat salt.txt)); keep it: the same salt gives the same pseudonyms")


def salt_fingerprint(salt: str) -> str:
    """sha256[:16] of the salt: what configs carry (it changes the shard folder when the salt changes).
    Use a long random salt (``openssl rand -hex 32``): a short one could be guessed from this digest."""
    return hashlib.sha256(salt.encode()).hexdigest()[:16]


def read_salt_file(path: str) -> str:
    """The first line of ``path``; a ValueError naming the file when it cannot be read or is empty."""
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as f:
            salt = f.readline().strip()
    except OSError as exc:
        raise ValueError(f"data.pseudonym_salt_file: cannot read {path} ({exc.strerror or exc}); {SALT_FIX}") from None
    if not salt:
        raise ValueError(f"data.pseudonym_salt_file: {path} is empty; {SALT_FIX}")
    return salt


def check_salt_strength(salt: str, layout: str) -> None:
    """Real data (any layout but phantom) is not pseudonymised with the public default or a short salt."""
    if salt == DEFAULT_SALT or len(salt) < MIN_SALT_CHARS:
        what = "no salt is set (the public default would be used)" if salt == DEFAULT_SALT else \
            f"the salt has {len(salt)} characters, under {MIN_SALT_CHARS} (128 bits as hex)"
        raise ConfigError(f"data.pseudonym_salt: data.layout={layout} is real data and {what}: anyone with a list "
                          f"of candidate ids could reverse the pseudonyms; {SALT_FIX}")
