"""Write the LUNA16 nodule (or candidate) table (see README.md); a thin wrapper over medsuite.data.luna16."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from medsuite.data.luna16 import luna16_annotations, luna16_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="LUNA16 folder (subset*/, annotations.csv)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--candidates", action="store_true", help="candidates.csv instead of annotations.csv")
    args = parser.parse_args()
    if args.candidates:
        table = luna16_candidates(args.root / "candidates.csv", annotations=args.root / "annotations.csv",
                                  scans=args.root)
    else:
        table = luna16_annotations(args.root / "annotations.csv", scans=args.root)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=args.out.parent.resolve())
    os.close(fd)
    table.to_csv(tmp, index=False)
    os.replace(tmp, args.out)
    print(f"{len(table)} rows -> {args.out}")


if __name__ == "__main__":
    main()
