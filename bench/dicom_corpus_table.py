"""The reading table of docs/reading-dicom.md, measured: every corpus file through medsuite and dcm2niix.

    python bench/dicom_corpus_table.py > /tmp/table.md

For each real file shipped in pydicom / pydicom-data / nibabel, and each generated scanner quirk, it prints what
`medsuite.io.read_volume` returns (the volume's size, or the refusal's code and reason), what dcm2niix writes,
and -- where both give a volume -- their agreement on dcm2niix's grid: r and the largest voxel difference,
medsuite sampled at the world position of each dcm2niix voxel (PixelPaddingValue voxels left out: medsuite sets
them to air). Not part of the tests; the tests assert the same things file by file.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_corpus import agreement, copy_into, nibabel_file, padding_hu, pydicom_file, run_dcm2niix  # noqa: E402
from dicom_factory import (  # noqa: E402
    edit_files,
    make_volume,
    strip_series_uid,
    write_ct,
    write_enhanced_4d,
    write_mosaic,
)

from medsuite.io import DicomError, read_volume  # noqa: E402

PYDICOM = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm", "693_UNCR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "explicit_VR-UN.dcm",
    "bad_sequence.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "eCT_Supplemental.dcm", "emri_small.dcm",
    "JPEG-LL.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "OBXXXX1A.dcm", "US1_J2KR.dcm", "MR_truncated.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm", "rtdose.dcm",
]  # fmt: skip
NIBABEL = ["decimal_rescale.dcm", "siemens_dwi_0.dcm.gz", "0.dcm", "csa_slice_norm.dcm", "philips_mprage.dcm.gz",
           "slicethickness_empty_string.dcm"]  # fmt: skip


def ours(path: Path, **options) -> tuple[str, object]:
    try:
        volume = read_volume(path, **options)
    except DicomError as exc:
        reason = str(exc).split(": ", 1)[-1].replace("|", "/")
        return f"refused ({exc.code}): {reason[:110]}", None
    extra = []
    if volume.meta.get("mosaic"):
        extra.append("mosaic")
    if volume.meta.get("volume"):
        extra.append(f"volume 1 of {volume.meta['volume']['count']}")
    if volume.meta.get("interpolated_slices"):
        extra.append(f"{len(volume.meta['interpolated_slices'])} slices interpolated")
    size = "x".join(str(n) for n in reversed(volume.shape))
    return f"read {size}" + (f" ({', '.join(extra)})" if extra else ""), volume


def theirs(folder: Path, out: Path) -> tuple[str, list[Path]]:
    files = run_dcm2niix(folder, out, check=False)
    if not files:
        return "no output (error)", []
    images = [sitk.ReadImage(str(f)) for f in files]
    sizes = ["x".join(str(n) for n in i.GetSize()) + f" ({'x'.join(f'{s:.3g}' for s in i.GetSpacing()[:3])} mm)" for i in images]
    return f"{len(files)} file(s): {', '.join(sizes[:3])}", files


def compare(volume, files: list[Path], source: Path | None) -> str:
    if volume is None or not files:
        return ""
    image = sitk.ReadImage(str(files[0]))
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    try:
        r, diff = agreement(volume.to_sitk(), image, ignore=padding_hu(source) if source else None)
    except AssertionError:
        return "grids differ"
    return f"r={r:.4f}, max diff {diff:.3g}"


def row(name: str, folder: Path, work: Path, source: Path | None = None, **options) -> str:
    what, volume = ours(source or folder, **options)
    them, files = theirs(folder, work / "d2n")
    return f"| {name} | {what} | {them} | {compare(volume, files, source)} |"


def quirks(root: Path) -> list[tuple[str, Path, dict]]:
    out = []
    truth = make_volume(shape=(10, 16, 20), spacing=(3.0, 2.0, 2.5), plane="oblique")
    out.append(("Siemens mosaic with CSA header, oblique (generated)", write_mosaic(root / "mosaic" / "m.dcm", truth).parent, {}))
    for t in range(3):
        write_mosaic(root / "fmri" / f"v{t}.dcm", make_volume(shape=(6, 8, 12), seed=t), acquisition=t + 1)
    out.append(("3 mosaics of one fMRI run (generated)", root / "fmri", {}))
    strip_series_uid(write_ct(root / "nouid", make_volume(shape=(8, 16, 16))))
    out.append(("CT series without SeriesInstanceUID (generated)", root / "nouid", {}))
    write_enhanced_4d(root / "dyn" / "e.dcm", [make_volume(shape=(5, 12, 12), seed=s) for s in range(3)])
    out.append(("Enhanced CT, 3 temporal positions (generated)", root / "dyn", {}))
    paths = write_ct(root / "gap", make_volume(shape=(9, 12, 12), spacing=(1.0, 0.7, 0.8)), shuffle_names=False)
    z = [0, 1, 2, 3, 6, 13, 14, 15, 16]
    edit_files(paths, lambda ds, k: setattr(ds, "ImagePositionPatient", [-12.0, 30.5, 100.0 + z[k]]))
    out.append(("CT with steps of 1, 3 and 7 mm (generated)", root / "gap", {}))
    cut = write_ct(root / "cut", make_volume(shape=(6, 12, 12)), shuffle_names=False)
    cut[3].write_bytes(cut[3].read_bytes()[:-100])
    out.append(("CT with one truncated slice (generated)", root / "cut", {}))
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    print("| file | medsuite | dcm2niix | agreement on dcm2niix's grid |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="medsuite-corpus-") as tmp:
        root = Path(tmp)
        for name in PYDICOM:
            work = root / name
            src = copy_into(pydicom_file(name), work / "in")
            print(row(f"pydicom `{name}`", src.parent, work, src), flush=True)
        for name in NIBABEL:
            work = root / name
            src = nibabel_file(name, work / "in")
            print(row(f"nibabel `{name}`", src.parent, work, src), flush=True)
        for name, folder, options in quirks(root / "quirks"):
            print(row(name, folder, root / f"w-{folder.name}", None, **options), flush=True)
    np.seterr(all="ignore")


if __name__ == "__main__":
    main()
