"""Seeded fuzzing of the DICOM reader with mutants of real files (issue 17): 0 tracebacks, 0 hangs, 0 silently
wrong volumes, every error naming the file.

Each mutant is read in a forked child under an address-space limit (RLIMIT_AS) and a wall-clock timeout,
through `read_volume`, `scan_folder`, `medsuite convert` and `medsuite inspect`. Oracles:
- *no traceback*: every failure is a `DicomError`/`ValueError`/`OSError` (the CLI: exit 1 with one line);
- *no hang*: the child finishes within the timeout; *bounded memory*: it never hits the limit;
- *named*: error messages (and error rows of the scan) name the mutated file;
- *never silently wrong*: a mutation that makes the header disagree with the pixels (sizes, bit depths,
  frame counts, invalid rescale or geometry values, compressed data with a defined length, truncation) is
  refused, or -- where the reader can tell the intended data apart -- gives exactly the seed's voxels at
  the seed's positions. (Valid-looking changes such as another RescaleIntercept cannot be detected by any
  reader and are only checked for the first three oracles.)
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import signal
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_corpus import nibabel_file, pydicom_file
from dicom_factory import make_volume, write_mosaic
from pydicom.dataelem import DataElement

SEED = 1234
TIMEOUT_S = 20.0
MEMORY_HEADROOM = 1536 * 2**20  # the child may allocate this much above what the parent already maps

# Real files shipped by pydicom / pydicom-data (GE, Toshiba CT/MR in five transfer syntaxes, Siemens JPEG
# Lossless CT, an enhanced CT), nibabel (a Siemens slice without SeriesInstanceUID), plus a synthetic
# Siemens mosaic with a CSA header.
PYDICOM_SEEDS = ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm"]  # fmt: skip
# Every semantic mutation is applied to these seeds; the others get a seeded sample of them.
FULL_SEEDS = ("CT_small.dcm", "MR_small_RLE.dcm", "mosaic.dcm")
SAMPLED = 12


@dataclass(frozen=True)
class Mutant:
    seed: str
    kind: str  # 'refuse': must be refused; 'same': refused or the seed's voxels; 'any': crash/hang/name only
    name: str
    data: bytes


# ------------------------------------------------------------------------------------- mutations
def _edit(data: bytes, change) -> bytes:
    from io import BytesIO

    ds = pydicom.dcmread(BytesIO(data), force=True)
    change(ds)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _set(keyword: str, value):
    def change(ds):
        setattr(ds, keyword, value)

    return change


def _raw(tag: int, text: bytes):
    """An unparsable value written as UN (pydicom refuses invalid DS/IS values)."""

    def change(ds):
        ds[tag] = DataElement(tag, "UN", text)

    return change


def _delete(keyword: str):
    def change(ds):
        if keyword in ds:
            delattr(ds, keyword)

    return change


def _semantic(ds: pydicom.Dataset) -> list[tuple[str, str, object]]:
    """(kind, name, change) for one seed dataset."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    out: list[tuple[str, str, object]] = [
        ("refuse", "rows+1", _set("Rows", rows + 1)),
        ("refuse", "cols-1", _set("Columns", cols - 1)),
        ("refuse", "rows*2", _set("Rows", rows * 2)),
        ("refuse", "rows0", _set("Rows", 0)),
        ("refuse", "cols65535", _set("Columns", 65535)),
        ("refuse", "bits8", _set("BitsAllocated", 8)),
        ("refuse", "bits64", _set("BitsAllocated", 64)),
        ("refuse", "bits32", _set("BitsAllocated", 32)),
        ("refuse", "frames-5", _set("NumberOfFrames", "-5")),
        ("refuse", "frames0", _set("NumberOfFrames", "0")),
        ("refuse", "frames2^31", _set("NumberOfFrames", "2147483647")),
        ("refuse", "frames2e8", _set("NumberOfFrames", "200000000")),
        ("refuse", "frames2", _set("NumberOfFrames", "2")),
        ("refuse", "samples3", _set("SamplesPerPixel", 3)),
        ("refuse", "palette", _set("PhotometricInterpretation", "PALETTE COLOR")),
        ("refuse", "rgb", _set("PhotometricInterpretation", "RGB")),
        ("refuse", "slope0", _set("RescaleSlope", "0")),
        ("refuse", "slope1e300", _set("RescaleSlope", "1e+300")),
        ("refuse", "slope-nan", _raw(0x00281053, b"nan ")),
        ("refuse", "slope-abc", _raw(0x00281053, b"abc ")),
        ("refuse", "intercept-inf", _raw(0x00281052, b"inf ")),
        ("refuse", "spacing0", _set("PixelSpacing", [0, 0.5])),
        ("refuse", "spacing-neg", _set("PixelSpacing", [-1, 0.5])),
        ("refuse", "spacing-abc", _raw(0x00280030, b"a\\b ")),
        ("refuse", "iop-zero", _set("ImageOrientationPatient", [0, 0, 0, 0, 0, 0])),
        ("refuse", "iop-parallel", _set("ImageOrientationPatient", [1, 0, 0, 1, 0, 0])),
        ("refuse", "iop-five", _set("ImageOrientationPatient", [1, 0, 0, 0, 1])),
        ("refuse", "ipp-nan", _raw(0x00200032, b"nan\\0\\0 ")),
        ("refuse", "no-ipp", _delete("ImagePositionPatient")),
        ("refuse", "no-spacing", _delete("PixelSpacing")),
        ("same", "no-series-uid", _delete("SeriesInstanceUID")),
        ("same", "no-sop-uid", _delete("SOPInstanceUID")),
        ("same", "group-length-bad", lambda ds: setattr(ds.file_meta, "FileMetaInformationGroupLength", 7)),
        ("any", "bits-stored-12", _set("BitsStored", 12)),
        ("any", "pixel-rep-flip", _set("PixelRepresentation", 1 - int(ds.get("PixelRepresentation", 0)))),
        ("any", "intercept-other", _set("RescaleIntercept", "17")),
    ]
    return out


def _truncations(data: bytes, rng: random.Random, n: int) -> list[tuple[str, str, bytes]]:
    out = []
    for _ in range(n):
        cut = rng.randrange(132, len(data))
        out.append(("same", f"truncate@{cut}", data[:cut]))
    return out


def _byte_noise(data: bytes, rng: random.Random, n: int) -> list[tuple[str, str, bytes]]:
    out = []
    header_end = min(len(data), 2048)
    for _ in range(n):
        buf = bytearray(data)
        how = rng.choice(["flip", "zero16", "dup", "insert", "ff"])
        at = rng.randrange(132, header_end)
        if how == "flip":
            for _ in range(rng.randint(1, 8)):
                k = rng.randrange(132, header_end)
                buf[k] ^= 1 << rng.randrange(8)
        elif how == "zero16":
            buf[at : at + 16] = bytes(16)
        elif how == "dup":
            buf[at:at] = buf[at : at + rng.randint(4, 64)]
        elif how == "insert":
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        else:
            buf[at : at + 4] = b"\xff\xff\xff\xff"
        out.append(("any", f"{how}@{at}", bytes(buf)))
    return out


def _structural(data: bytes) -> list[tuple[str, str, bytes]]:
    nested = (b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 1500
    nested += (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * 1500
    at = data.index(b"\x08\x00\x60\x00") if b"\x08\x00\x60\x00" in data[132:] else None  # before Modality
    out = [("any", "empty", b""), ("any", "preamble-only", bytes(128) + b"DICM")]
    if at is not None:
        out.append(("any", "nested-1500", data[:at] + nested + data[at:]))
    return out


def build_mutants(folder: Path) -> list[Mutant]:
    """Seeded mutants of every seed (about 230)."""
    rng = random.Random(SEED)
    seeds: dict[str, bytes] = {name: pydicom_file(name).read_bytes() for name in PYDICOM_SEEDS}
    seeds["decimal_rescale.dcm"] = nibabel_file("decimal_rescale.dcm", folder / "seeds").read_bytes()
    seeds["mosaic.dcm"] = write_mosaic(folder / "seeds" / "mosaic.dcm", make_volume(shape=(9, 12, 12))).read_bytes()
    mutants: list[Mutant] = []
    for seed, data in seeds.items():
        ds = pydicom.dcmread(__import__("io").BytesIO(data), force=True)
        semantic = _semantic(ds)
        if seed not in FULL_SEEDS:
            semantic = rng.sample(semantic, SAMPLED)
        for kind, name, change in semantic:
            try:
                mutants.append(Mutant(seed, kind, name, _edit(data, change)))
            except Exception:  # noqa: BLE001 - pydicom cannot write this combination: not a mutant
                continue
        for kind, name, blob in [*_truncations(data, rng, 3), *_byte_noise(data, rng, 5), *_structural(data)]:
            mutants.append(Mutant(seed, kind, name, blob))
    defined = bytearray(seeds["MR_small_RLE.dcm"])  # compressed pixel data with a defined length
    at = defined.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    defined[at + 8 : at + 12] = (4661).to_bytes(4, "little")
    mutants.append(Mutant("MR_small_RLE.dcm", "refuse", "defined-length", bytes(defined)))
    return mutants


# ------------------------------------------------------------------------------------- the child
def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _named(message: str, path: Path) -> bool:
    return path.name in message or str(path.parent) in message


def _exercise(path: Path, out_dir: Path) -> dict:
    """Every entry point on one file; a summary that the parent checks against the oracles."""
    from typer.testing import CliRunner

    from medsuite.io import read_volume, scan_folder

    app = _cli()
    report: dict = {"failures": []}
    try:
        volume = read_volume(path)
        report["read"] = "ok"
        report["shape"] = list(volume.shape)
        report["array"] = np.asarray(volume.array, dtype=np.float64).tobytes().hex() if volume.array.size < 300_000 else None
        report["geometry"] = [*volume.origin, *volume.spacing, *np.asarray(volume.direction).ravel()]
    except (ValueError, OSError) as exc:
        report["read"] = "error"
        if not _named(str(exc), path):
            report["failures"].append(f"read_volume error does not name the file: {exc}")
    try:
        scan = scan_folder(path.parent)
        for row in scan.series.itertuples():
            if row.status == "error" and not _named(row.problems, path) and path.name not in " ".join(row.files):
                report["failures"].append(f"scan error row does not name the file: {row.problems}")
        report["scan"] = sorted(scan.series.status.tolist()) + sorted(scan.skipped.code.tolist())
    except Exception as exc:  # noqa: BLE001 - any exception here is a failure of scan_folder's promise
        report["failures"].append(f"scan_folder raised {type(exc).__name__}: {exc}")
    runner = CliRunner()
    for args in (["convert", str(path), str(out_dir / "out.nii.gz"), "--force"], ["inspect", str(path.parent)]):
        result = runner.invoke(app, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            text = "".join(traceback.format_exception(result.exception))
            report["failures"].append(f"{args[0]} raised a traceback: {text[-400:]}")
        elif result.exit_code not in (0, 1):
            report["failures"].append(f"{args[0]} exited {result.exit_code}: {result.output[-200:]}")
        elif args[0] == "convert" and result.exit_code == 1 and not _named(result.output, path):
            report["failures"].append(f"convert error does not name the file: {result.output[-300:]}")
        if "Traceback" in result.output:
            report["failures"].append(f"{args[0]} printed a traceback")
    return report


def _cli():
    """The convert and inspect commands as the CLI registers them (a two-command app builds in milliseconds)."""
    import typer

    from medsuite.commands import convert, inspect

    app = typer.Typer()
    app.command("convert")(convert.command)
    app.command("inspect")(inspect.command)
    return app


def _preload() -> None:
    """Import everything the children use once, in the parent, so that each fork starts warm (milliseconds)."""
    import warnings

    import SimpleITK  # noqa: F401
    import typer.testing  # noqa: F401

    import medsuite.commands.convert  # noqa: F401
    import medsuite.commands.inspect  # noqa: F401
    import medsuite.io.load  # noqa: F401
    import medsuite.io.mosaic  # noqa: F401
    import medsuite.io.reader  # noqa: F401
    import medsuite.io.sitk_io  # noqa: F401
    from medsuite.io.mosaic import csa_image_header  # noqa: F401 - nibabel's csareader loads on first use

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nibabel.nicom.csareader  # noqa: F401
    import pydicom.pixels  # noqa: F401


def run_in_child(path: Path, out_dir: Path) -> dict:
    """`_exercise` in a forked child with RLIMIT_AS and a timeout; {'failures': [...]} says what went wrong."""
    _preload()
    limit = _vm_bytes() + MEMORY_HEADROOM
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        code = 0
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            report = _exercise(path, out_dir)
        except MemoryError:
            report = {"failures": ["MemoryError escaped (memory not bounded by the file's bytes)"]}
        except BaseException as exc:  # noqa: BLE001 - report, never let the child run pytest's code
            report = {"failures": [f"uncaught {type(exc).__name__}: {exc}"]}
        try:
            os.write(write_fd, json.dumps(report).encode())
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = __import__("time").monotonic() + TIMEOUT_S
    try:
        while True:
            remaining = deadline - __import__("time").monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"failures": [f"hang: no answer within {TIMEOUT_S:.0f} s"]}
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if ready:
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"failures": [f"child died (status {status}): killed for memory or crashed"]}
    return json.loads(b"".join(chunks))


# ------------------------------------------------------------------------------------------- test
@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> list[tuple[Mutant, dict, dict]]:
    root = tmp_path_factory.mktemp("fuzz")
    mutants = build_mutants(root)
    references: dict[str, dict] = {}
    results = []
    for k, mutant in enumerate(mutants):
        if mutant.seed not in references:
            folder = root / "ref" / mutant.seed
            folder.mkdir(parents=True)
            seed_path = folder / mutant.seed
            source = root / "seeds" / mutant.seed
            seed_path.write_bytes(source.read_bytes() if source.exists() else pydicom_file(mutant.seed).read_bytes())
            references[mutant.seed] = run_in_child(seed_path, folder)
        folder = root / f"m{k:04d}"
        folder.mkdir()
        path = folder / f"mutant_{k:04d}_{mutant.name.replace('@', '_at_')}.dcm"
        path.write_bytes(mutant.data)
        results.append((mutant, run_in_child(path, folder), references[mutant.seed]))
        shutil.rmtree(folder, ignore_errors=True)
    return results


def test_seeds_read_cleanly(fuzz_results):
    seeds = {m.seed: ref for m, _, ref in fuzz_results}
    assert len(seeds) == len(PYDICOM_SEEDS) + 2
    for name, ref in seeds.items():
        assert ref["failures"] == [] and ref.get("read") == "ok", (name, ref)


def test_a_few_hundred_mutants_no_traceback_no_hang_every_error_named(fuzz_results):
    assert len(fuzz_results) >= 200
    failures = [(m.seed, m.name, f) for m, r, _ in fuzz_results for f in r["failures"]]
    assert failures == [], f"{len(failures)} failure(s), e.g. {failures[:5]}"
    outcomes = Counter(r.get("read") for _, r, _ in fuzz_results)
    assert outcomes["error"] > 100 and outcomes["ok"] > 20, outcomes  # the suite exercises both paths


def test_mutants_are_refused_or_give_the_seed_voxels(fuzz_results):
    wrong = []
    for mutant, report, reference in fuzz_results:
        if mutant.kind == "any" or report.get("read") != "ok":
            continue
        if mutant.kind == "refuse":
            wrong.append((mutant.seed, mutant.name, "read although the header contradicts the pixels"))
            continue
        same = (
            report["shape"] == reference["shape"]
            and report["array"] == reference["array"]
            and np.allclose(report["geometry"], reference["geometry"], atol=1e-4)
        )
        if not same:
            wrong.append((mutant.seed, mutant.name, "read with other voxels or geometry than the seed"))
    assert wrong == [], f"{len(wrong)} silently wrong: {wrong[:8]}"
