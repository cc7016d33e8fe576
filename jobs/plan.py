"""`python jobs/plan.py --help`: the `bidpm plan` command from a checkout (what `ray job submit` runs).

The job itself is `bidpm.commands.plan` (argument parsing + one library call); this shim only puts
`platform/` on the path so a checkout works without `pip install`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import run_main  # noqa: E402
from bidpm.commands.plan import main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
