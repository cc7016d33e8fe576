"""The console report of an ingest's skipped subjects, with the ORIGINAL ids and file paths.

The manifest keeps pseudonyms only (it travels with the shards); a user fixing inputs needs the id and
the file. Both come back here from the inputs (listed again: no volume is read) and the salt, and are
printed for whoever runs the ingest, never written anywhere.
"""

from __future__ import annotations

from ..config.data import SALT_ENV
from .layouts import LayoutError, SubjectFiles, discover
from .manifest import DataError, input_root_location, pseudonym

__all__ = ["skipped_report"]


def skipped_report(cfg, manifest: dict) -> list[str]:
    """Console lines for the manifest's skipped subjects (module docstring)."""
    skipped = list(manifest.get("skipped") or [])
    if not skipped:
        return []
    d = cfg.data
    salt = d.known_salt() if d.pseudonymise else ""
    by_name: dict[str, SubjectFiles] = {}
    note = []
    if salt is None:
        note = [f"  (original ids and paths need the pseudonym salt: set ${SALT_ENV} as for the ingest)"]
    else:
        try:
            src_mod, tgt_mod = d.modalities
            found = discover(d.reader_layout, input_root_location(cfg), src_mod, tgt_mod, d.reader_region,
                             allow_outside_root=d.allow_outside_root)
        except (LayoutError, DataError, OSError) as exc:
            found, note = [], [f"  (inputs not listable for original ids: {exc})"]
        by_name = {pseudonym(s.subject, salt, d.pseudonymise): s for s in found}
    lines = []
    for e in skipped:
        s = by_name.get(e["subject"])
        if s is None:
            where = f" file {e['location']}" if e.get("location") else ""
            lines.append(f"  skipped {e['subject']}: {e['role']}{where}: {_problem(e)}")
            continue
        loc = s.problem.location if s.problem else (getattr(s, e["role"], None) or e.get("location") or "?")
        lines.append(f"  skipped subject {s.subject} (pseudonym {e['subject']}): {e['role']} file {loc}: {_problem(e)}")
    return lines + note


def _problem(entry: dict) -> str:
    """A pseudonymised manifest keeps the category only (``build_manifest``); the ingest printed the text."""
    return f"{entry['problem']} [{entry['kind']}]" if entry.get("problem") else f"[{entry['kind']}] (the ingest's log has the details)"
