"""Check a NoduleMNIST3D .npz and write its patch table (see README.md)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from medsuite.data.nodulemnist import load_nodulemnist3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npz", type=Path, required=True, help="nodulemnist3d.npz")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args()
    _, table = load_nodulemnist3d(args.npz)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=args.out.parent.resolve())
    os.close(fd)
    table.to_csv(tmp, index=False)
    os.replace(tmp, args.out)
    print(table.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    main()
