"""Copy the captured scenarios the simulator plays into the package (gzip'd, byte-identical inside).

The simulator must work from an installed eslbridge (`pip install . && eslbridge demo`), where
the tests' fixtures are not installed. tests/test_sim_captures.py fails when these copies differ from
tests/fixtures/captured: rerun `python tools/pack_sim_captures.py` then.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from eslbridge.sim.templates import PACKAGED, SCENARIO_FILES, packaged_files

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "captured"


def main() -> None:
    PACKAGED.mkdir(exist_ok=True)
    for name in packaged_files(SCENARIO_FILES):
        data = (SOURCE / name).read_bytes()
        if name.endswith(".esl"):
            # mtime=0: the same capture always packs to the same bytes (no churn in git).
            (PACKAGED / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        else:
            shutil.copyfile(SOURCE / name, PACKAGED / name)
        print(f"packed {name}")


if __name__ == "__main__":
    main()
