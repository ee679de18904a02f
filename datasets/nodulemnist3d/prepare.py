"""Check a NoduleMNIST3D .npz and write its patch table (see README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsuite.data.nodulemnist import load_nodulemnist3d
from medsuite.io.atomic import atomic_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npz", type=Path, required=True, help="nodulemnist3d.npz")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args()
    _, table = load_nodulemnist3d(args.npz)
    with atomic_open(args.out, "w", newline="") as handle:
        table.to_csv(handle, index=False)
    print(table.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    main()
