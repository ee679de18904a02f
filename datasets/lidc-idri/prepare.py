"""Write the LIDC-IDRI nodule table (see README.md); a thin wrapper over medsuite.data.lidc.

With --dicom (your LIDC-IDRI download, any part of it) the series are matched by SeriesInstanceUID, x/y
become world coordinates, and only the nodules of the series you have are written (with a `path` column,
relative to the output file); it says how many matched. Without --dicom the table has the readers' ratings
and pixel x/y only (x_mm/y_mm empty), which training and scoring refuse.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medsuite.data.lidc import (
    LABEL_RULES,
    LidcError,
    dicom_geometry,
    lidc_match_summary,
    lidc_nodules,
    series_folders,
)
from medsuite.data.tables import TableError
from medsuite.io.atomic import atomic_open


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--dicom", type=Path, help="your LIDC-IDRI DICOM folder (TCIA layout or any other)")
    parser.add_argument("--rule", default="median", choices=sorted(LABEL_RULES), help="label rule (default: median)")
    parser.add_argument("--keep-excluded", action="store_true", help="keep unlabelled nodules (label 'excluded')")
    parser.add_argument("--workers", type=int, default=None, help="header readers for the DICOM scan (default: all cores)")
    args = parser.parse_args()
    try:
        geometry = folders = None
        if args.dicom is not None:
            from medsuite.io.dicom import scan_folder

            if not args.dicom.is_dir():
                raise LidcError(f"{args.dicom}: folder not found")
            print(f"scanning {args.dicom} (DICOM headers only) ...", file=sys.stderr)
            series = scan_folder([args.dicom], workers=args.workers).series
            series = series[series["status"] != "error"] if len(series) else series
            geometry, folders = dicom_geometry(series), series_folders(series)
        table = lidc_nodules(rule=args.rule, geometry=geometry, keep_excluded=args.keep_excluded)
        if args.dicom is not None:
            summary = lidc_match_summary(table, str(args.dicom))
            if len(table) == 0:
                raise LidcError(f"{summary}: nothing to write. Is {args.dicom} the folder of your LIDC-IDRI download "
                                "(LIDC-IDRI/LIDC-IDRI-0001/<study>/<series>/*.dcm)?")
            base = args.out.parent.resolve()
            table["path"] = [os.path.relpath(folders[u].resolve(), base) for u in table["series_uid"]]
            table["modality"] = "CT"
        else:
            summary = lidc_match_summary(table)
    except (LidcError, TableError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with atomic_open(args.out, "w", newline="") as handle:
        table.to_csv(handle, index=False)
    counts = table["label"].value_counts().to_dict()
    print(summary)
    print(f"{len(table)} nodules ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}; "
          f"rule {args.rule}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
