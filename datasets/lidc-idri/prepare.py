"""Write the LIDC-IDRI nodule table (see README.md); a thin wrapper over medsuite.data.lidc."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from medsuite.data.lidc import LABEL_RULES, lidc_nodules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--dicom", type=Path, help="folder of the LIDC-IDRI DICOM (for world x/y)")
    parser.add_argument("--rule", default="median", choices=sorted(LABEL_RULES), help="label rule")
    parser.add_argument("--keep-excluded", action="store_true", help="keep unlabelled nodules (label -1)")
    args = parser.parse_args()
    table = lidc_nodules(rule=args.rule, geometry=args.dicom, keep_excluded=args.keep_excluded)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=args.out.parent.resolve())
    os.close(fd)
    table.to_csv(tmp, index=False)
    os.replace(tmp, args.out)
    print(f"{len(table)} nodules ({int((table['label'] == 'malignant').sum())} malignant) -> {args.out}")


if __name__ == "__main__":
    main()
