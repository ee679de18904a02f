"""Hostile and unlucky inputs (issue 17 items 1, 2, 3, 6, 10, 11): memory bounded by the bytes present, one bad
file stays that file's, special files never hang, silently-wrong pixels refused, clear errors naming the file,
no partial output after kill -9."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_corpus import copy_into, pydicom_file
from dicom_factory import make_volume, write_ct
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.io import Code, DicomError, read_volume, scan_folder
from medsuite.io.atomic import temp_path_for
from medsuite.pipelines.scoring.discover import Rules, decide, discover

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _limited(code: str, *, memory_gb: float = 2.0, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter under an address-space limit and a wall-clock timeout."""

    def limit() -> None:
        size = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit, env=ENV)  # fmt: skip


def _series(folder: Path, n: int = 4, **tags) -> list[Path]:
    return write_ct(folder, make_volume(shape=(n, 12, 12)), shuffle_names=False, **tags)


def _set(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _patch_text(path: Path, tag: int, text: bytes) -> None:
    """Overwrite the value of a short explicit-VR element in place (pydicom refuses to write invalid values)."""
    data = bytearray(path.read_bytes())
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    at = data.index(head, 132)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    data[at + 8 : at + 8 + length] = text.ljust(length)[:length]
    path.write_bytes(bytes(data))


def _insert_before(path: Path, tag: int, blob: bytes) -> None:
    """Insert raw element bytes before the first top-level element whose tag is above ``tag``."""
    from medsuite.io.rawheader import read_raw_header

    raw = read_raw_header(str(path))
    later = min(t for t in raw.elements if t > tag)
    elem = raw.elements[later]
    start = elem.value_tell - (12 if elem.VR in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR") else 8)
    data = path.read_bytes()
    path.write_bytes(data[:start] + blob + data[start:])


def _nested_sequence(depth: int) -> bytes:
    """(0008,1140) ReferencedImageSequence nested ``depth`` deep, undefined lengths, explicit VR LE."""
    open_seq = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"
    open_item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close_item = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    close_seq = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (open_seq + open_item) * depth + (close_item + close_seq) * depth


# ------------------------------------------------------------------- 1: memory from the bytes present
@pytest.mark.parametrize("frames", [2147483647, 200_000_000])
def test_huge_number_of_frames_is_refused_without_allocating(tmp_path, frames):
    paths = _series(tmp_path / "ct")
    _set(paths[1], NumberOfFrames=frames)
    rle = copy_into(pydicom_file("MR_small_RLE.dcm"), tmp_path / "rle")
    _set(rle, NumberOfFrames=frames)
    code = (
        "import time, resource; t = time.time()\n"
        "from medsuite.io import scan_folder\n"
        f"s = scan_folder({str(tmp_path)!r}).series\n"
        "print(sorted(s.status), round(time.time() - t, 1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
        "print(' | '.join(s.problems))"
    )
    done = _limited(code, memory_gb=1.5)
    assert done.returncode == 0, done.stderr
    statuses, problems = done.stdout.splitlines()
    assert statuses.startswith("['error', 'error']")
    assert f"NumberOfFrames {frames}" in problems or "pixel data too short" in problems
    assert paths[1].name in problems and "MR_small_RLE.dcm" in problems
    with pytest.raises(DicomError, match=paths[1].name):
        read_volume(tmp_path / "ct")


# ------------------------------------------------------------ 2: one file's fault stays that file's
def test_negative_frames_in_another_series_does_not_stop_the_batch(tmp_path):
    good = _series(tmp_path / "good", n=12, SeriesDescription="good")
    bad = _series(tmp_path / "bad", n=12, SeriesDescription="bad")
    _set(bad[3], NumberOfFrames="-5")
    table = scan_folder(tmp_path).series
    by = dict(zip(table.description, table.itertuples(), strict=True))
    assert by["good"].status == "ok" and by["bad"].status == "error"
    assert "NumberOfFrames -5" in by["bad"].problems and bad[3].name in by["bad"].problems
    decisions = {d.row["description"]: d for d in decide(discover([tmp_path]).series, Rules())}
    assert decisions["good"].action == "score" and decisions["bad"].action == "error"
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "good" in result.output
    assert read_volume(tmp_path / "good").shape[0] == len(good)


# ---------------------------------------------------------------------------------- 3: special files
def test_fifos_devices_sockets_and_links_are_skipped_without_hanging(tmp_path):
    folder = tmp_path / "in"
    _series(folder)
    os.mkfifo(folder / "x.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    (folder / "dangling.dcm").symlink_to(folder / "nowhere")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s.dcm"))
    try:
        code = (
            "from medsuite.io import scan_folder\n"
            f"s = scan_folder({str(folder)!r})\n"
            "print(len(s.series), s.series.status[0]); print(sorted(zip(s.skipped.path, s.skipped.code)))"
        )
        done = _limited(code, timeout=60)
        assert done.returncode == 0, done.stderr
        count, skipped = done.stdout.splitlines()
        assert count == "1 ok"
        for name in ("x.dcm", "zero.dcm", "dangling.dcm", "loop", "s.dcm"):
            assert f"{folder / name}', 'not_regular_file'" in skipped, name
        for target in ("x.dcm", "zero.dcm"):
            run = _limited(f"from medsuite.io import read_volume\nread_volume({str(folder / target)!r})", timeout=60)
            assert run.returncode == 1 and "not a regular file" in run.stderr and target in run.stderr
            assert "Traceback" not in run.stderr.split("NotDicomError")[0].split("\n")[-1]
        convert = subprocess.run([sys.executable, "-m", "medsuite", "convert", str(folder / "x.dcm"), str(tmp_path / "o.nii.gz")],
                                 capture_output=True, text=True, timeout=60, env=ENV)  # fmt: skip
        assert convert.returncode == 1 and "not a regular file" in convert.stderr and "Traceback" not in convert.stderr
    finally:
        sock.close()


# ------------------------------------------------------------------------------ 6: silently wrong
def test_jpeg_lossless_with_a_defined_length_is_refused(tmp_path):
    path = copy_into(pydicom_file("bad_sequence.dcm"), tmp_path / "in")  # real Siemens CT, JPEG Lossless
    original = read_volume(path)
    data = bytearray(path.read_bytes())
    at = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    data[at + 8 : at + 12] = (4661).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(DicomError, match=r"bad_sequence\.dcm.*undefined length.*4661") as caught:
        read_volume(path)
    assert caught.value.code == Code.PIXEL_LENGTH
    assert original.shape == (1, 512, 512)


@pytest.mark.parametrize(("value", "words"), [(b"0", "RescaleSlope 0"), (b"1e300", "overflow"), (b"inf", "not a number"),
                                             (b"abc", "not a number"), (b"nan", "not a number")])  # fmt: skip
def test_invalid_rescale_slope_is_refused(tmp_path, value, words):
    paths = _series(tmp_path / "in")
    _set(paths[2], RescaleSlope="1.00000000")  # room for the values below
    _patch_text(paths[2], 0x00281053, value)
    with pytest.raises(DicomError, match=rf"{paths[2].name}.*{words}") as caught:
        read_volume(tmp_path / "in")
    assert caught.value.code == Code.INVALID_HEADER


def test_palette_colour_is_refused_as_colour(tmp_path):
    paths = _series(tmp_path / "in")
    _set(paths[0], PhotometricInterpretation="PALETTE COLOR")
    scan = scan_folder(tmp_path / "in")
    assert scan.skipped.code.tolist() == ["colour"] and "PALETTE COLOR" in scan.skipped.reason[0]
    assert "unreadable_neighbour" not in scan.series.codes[0]  # a colour image is not a lost slice
    with pytest.raises(DicomError, match="PALETTE COLOR") as caught:
        read_volume(paths[0])
    assert caught.value.code == Code.COLOUR


def test_an_8_bit_slice_among_16_bit_slices_is_read_exactly(tmp_path):
    truth = make_volume(shape=(5, 12, 12))
    array = truth.array.copy()
    array[2] = -1000 + 10 * (np.arange(144).reshape(12, 12) % 200)  # representable as 8-bit x 10 - 1000
    truth = truth.with_array(array)
    paths = write_ct(tmp_path / "in", truth, shuffle_names=False)
    ds = pydicom.dcmread(paths[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = 10, -1000
    ds.PixelData = ((array[2] + 1000) // 10).astype(np.uint8).tobytes()
    ds.save_as(paths[2])
    row = scan_folder(tmp_path / "in").series.iloc[0]
    assert row.status == "warning" and "mixed_pixel_format" in row.codes
    np.testing.assert_array_equal(read_volume(tmp_path / "in").array, truth.array)


@pytest.mark.parametrize(("keyword", "value", "code"), [("BitsAllocated", 8, Code.INVALID_HEADER), ("Columns", 11, Code.PIXEL_LENGTH),
                                                        ("Rows", 13, Code.PIXEL_LENGTH), ("BitsAllocated", 64, Code.INVALID_HEADER),
                                                        ("Rows", 0, Code.INVALID_HEADER)])  # fmt: skip
def test_header_that_does_not_describe_the_pixels_is_refused(tmp_path, keyword, value, code):
    paths = _series(tmp_path / "in")
    _set(paths[1], **{keyword: value})
    with pytest.raises(DicomError, match=paths[1].name) as caught:
        read_volume(tmp_path / "in")
    assert caught.value.code == code
    assert scan_folder(tmp_path / "in").series.status.tolist() == ["error"]


def test_mixed_pixel_spacing_within_a_stack_is_refused(tmp_path):
    paths = _series(tmp_path / "in")
    _set(paths[3], PixelSpacing=[0.5, 0.5])
    row = scan_folder(tmp_path / "in").series.iloc[0]
    assert row.status == "error" and "mixed_pixel_spacing" in row.codes
    with pytest.raises(DicomError, match="PixelSpacing differs") as caught:
        read_volume(tmp_path / "in")
    assert caught.value.code == Code.MIXED_PIXEL_SPACING


@pytest.mark.parametrize("value", [[0, 0.7], [-1, 0.7], ["nan", 0.7]])
def test_non_positive_pixel_spacing_names_the_file(tmp_path, value):
    paths = _series(tmp_path / "in")
    _set(paths[0], PixelSpacing=value)
    with pytest.raises(DicomError, match=rf"{paths[0].name}.*PixelSpacing.*positive") as caught:
        read_volume(tmp_path / "in")
    assert caught.value.code == Code.INVALID_HEADER


# ------------------------------------------------------------------------------ 10: clear errors
def test_deeply_nested_sequences_give_an_error_naming_the_file(tmp_path):
    paths = _series(tmp_path / "in")
    _insert_before(paths[1], 0x00081140, _nested_sequence(1200))
    done = _limited(f"from medsuite.io import scan_folder\ns = scan_folder({str(tmp_path / 'in')!r})\n"
                    "print(s.skipped.to_dict('records')); print(s.series.status.tolist(), s.series.codes.tolist())")  # fmt: skip
    assert done.returncode == 0, done.stderr
    skipped, status = done.stdout.splitlines()
    assert paths[1].name in skipped and "nested too deeply" in skipped
    assert "warning" in status and "unreadable_neighbour" in status  # its series says a file was lost
    result = CliRunner().invoke(app, ["convert", str(paths[1]), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 1 and paths[1].name in result.output and "nested too deeply" in result.output


@pytest.mark.parametrize("length", [0, 7, 0xFFFFFFF0])
def test_corrupted_group_length_reads_correctly_or_names_the_file(tmp_path, length):
    truth = make_volume(shape=(4, 12, 12))
    paths = write_ct(tmp_path / "in", truth, shuffle_names=False)
    data = bytearray(paths[0].read_bytes())
    at = data.index(b"\x02\x00\x00\x00UL\x04\x00")
    data[at + 8 : at + 12] = length.to_bytes(4, "little")
    paths[0].write_bytes(bytes(data))
    try:
        volume = read_volume(tmp_path / "in")
    except DicomError as exc:
        assert paths[0].name in str(exc)
    else:
        np.testing.assert_array_equal(volume.array, truth.array)


def test_unreadable_subfolder_is_reported(tmp_path, monkeypatch):
    _series(tmp_path / "in" / "ok")
    _series(tmp_path / "in" / "locked")
    real = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_folder(tmp_path / "in")
    assert len(scan.series) == 1
    assert scan.skipped.code.tolist() == ["unreadable_folder"] and "Permission denied" in scan.skipped.reason[0]
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "in")])
    assert "locked" in result.output and "folder cannot be listed" in result.output


def test_convert_never_silently_drops_an_unreadable_end_slice(tmp_path, monkeypatch):
    paths = _series(tmp_path / "in", n=8)
    import medsuite.io.dicom as dicom

    real = dicom.open_regular

    def open_regular(path):
        if str(path) == str(paths[-1]):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(dicom, "open_regular", open_regular)
    row = scan_folder(tmp_path / "in").series.iloc[0]
    assert row.status == "warning" and "unreadable_neighbour" in row.codes and paths[-1].name in row.problems
    volume = read_volume(tmp_path / "in")  # every consumer of the volume is told
    assert volume.shape[0] == 7 and volume.meta["unread_files"] == 1
    assert any("may lack them" in n for n in volume.meta["notes"])
    out = tmp_path / "o.nii.gz"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(out)])
    assert result.exit_code == 1 and not out.exists(), result.output  # refused by default, naming the file
    assert paths[-1].name in result.output and "--allow-missing-files" in result.output
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(out), "--allow-missing-files"])
    assert result.exit_code == 0 and "warning" in result.output and paths[-1].name in result.output
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["complete"] is False and sidecar["unread_files"] == 1 and sidecar["nifti"] == "o.nii.gz"
    assert paths[-1].name not in json.dumps(sidecar)  # facts, not file names (they may carry patient data)
    one = tmp_path / "one.nii.gz"  # one file of that stack: refused too, not converted as a lone slice
    result = CliRunner().invoke(app, ["convert", str(paths[0]), str(one)])
    assert result.exit_code == 1 and not one.exists() and "--allow-missing-files" in result.output, result.output
    assert "on its own" not in result.output
    folder = tmp_path / "each"  # one NIfTI per stack: the stack is refused, the batch exits 1
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(folder)])
    assert result.exit_code == 1 and "FAILED" in result.output and not list(folder.glob("*.nii.gz"))


def test_the_sidecar_of_a_4d_nifti_describes_every_volume(tmp_path):
    """Facts shared by the volumes once; a fact that differs, one entry per volume; no single-volume index."""
    from medsuite.commands.convert import _sidecar
    from medsuite.io.volume import Volume

    def volume(index: int, interpolated: list[int]) -> Volume:
        return Volume(np.zeros((3, 2, 2), np.int16), spacing=(1.0, 1.0, 1.0),
                      meta={"unread_files": 1, "interpolated_slices": interpolated, "volume": {"index": index, "count": 2}})

    _sidecar([volume(0, []), volume(1, [2])], tmp_path / "four.nii.gz")
    sidecar = json.loads((tmp_path / "four.json").read_text())
    assert sidecar["complete"] is False and sidecar["unread_files"] == 1 and sidecar["volumes"] == 2
    assert sidecar["interpolated_slices"] == [None, [2]] and "volume" not in sidecar
    _sidecar([volume(1, [2])], tmp_path / "one.nii.gz")  # one volume of the stack: its index is a fact
    assert json.loads((tmp_path / "one.json").read_text())["volume"] == {"index": 1, "count": 2}


def test_a_complete_stack_gets_no_sidecar_and_a_stale_one_is_removed(tmp_path):
    _series(tmp_path / "in", n=5)
    out = tmp_path / "o.nii.gz"
    (tmp_path / "o.json").write_text(json.dumps({"written_by": "medsuite convert", "complete": False}))
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(out)])
    assert result.exit_code == 0 and out.is_file() and not (tmp_path / "o.json").exists(), result.output


def _bad_rle(path: Path) -> Path:
    """MR_small_RLE.dcm whose first RLE segment ends in two 128-byte runs: pylibjpeg-rle (Rust) panics."""
    import struct

    from pydicom.encaps import generate_frames

    src = pydicom_file("MR_small_RLE.dcm")
    data = bytearray(Path(src).read_bytes())
    frame = next(generate_frames(pydicom.dcmread(src).PixelData, number_of_frames=1))
    start = data.find(frame)
    end_of_first = start + struct.unpack("<3I", frame[:12])[2]
    data[end_of_first - 4:end_of_first] = b"\x81\x7f\x81\x7f"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_rust_decoder_panic_is_one_clean_line_naming_the_file(tmp_path):
    bad = _bad_rle(tmp_path / "in" / "bad.dcm")
    res = subprocess.run([sys.executable, "-m", "medsuite", "convert", str(bad), str(tmp_path / "o.nii.gz")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.dcm" in errors[0] and "RLE Lossless" in errors[0], res.stderr
    assert "panicked" not in res.stderr and "backtrace" not in res.stderr and "src/lib.rs" not in res.stderr
    assert all(line.startswith(("error:", "warning:", "note:")) for line in res.stderr.splitlines() if line.strip())


def test_other_text_written_while_a_decoder_runs_is_passed_on(tmp_path):
    script = (
        "import os\n"
        "from medsuite.io.native_stderr import native_stderr_captured\n"
        "with native_stderr_captured():\n"
        "    os.write(2, b\"before\\n\\nthread '<unnamed>' panicked at src/lib.rs:1:2:\\nboom\\n"
        "note: run with `RUST_BACKTRACE=1`\\nafter\\n\")\n"
        "    with native_stderr_captured():\n"
        "        os.write(2, b\"nested\\n\")\n"
        "os.write(2, b\"outside\\n\")\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 0 and res.stderr == "before\nafter\nnested\noutside\n", repr(res.stderr)


# -------------------------------------------------------------------------- 11: no partial output
def test_convert_removes_temporaries_of_a_killed_run(tmp_path):
    """convert is frozen (SIGSTOP) the moment its temporary output has bytes, then SIGKILLed: caught mid-write
    whatever the machine's load (a run that finished first is simply started again, at most 5 times)."""
    write_ct(tmp_path / "in", make_volume(shape=(60, 256, 256)), shuffle_names=False)
    target = tmp_path / "out" / "ct.nii.gz"
    target.parent.mkdir()
    command = [sys.executable, "-m", "medsuite", "convert", str(tmp_path / "in"), str(target), "--force"]
    caught = False
    for _ in range(5):
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None:
            temps = [p for p in target.parent.iterdir() if p.name.startswith(".ct.nii.gz.")]
            if temps and temps[0].stat().st_size > 0:
                process.send_signal(signal.SIGSTOP)  # frozen mid-write: nothing moves until the kill
                caught = process.poll() is None
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        process.wait(timeout=60)
        if caught:
            break
        target.unlink(missing_ok=True)
    assert caught, "convert finished 5 times before its output could be caught mid-write"
    assert not target.exists()  # caught mid-write: no target, only a hidden partial temporary
    assert [p for p in target.parent.iterdir() if p.name.startswith(".ct.nii.gz.")]
    assert all(p.name.startswith(".") for p in target.parent.iterdir())
    rerun = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(target), "--force"])
    assert rerun.exit_code == 0, rerun.output
    assert [p.name for p in target.parent.iterdir()] == ["ct.nii.gz"], "the re-run removed the dead run's temporaries"


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    write_ct(tmp_path / "in", make_volume(shape=(4, 8, 8)))
    target = tmp_path / "ct.nii.gz"
    stale = temp_path_for(target)
    dead = stale.with_name(stale.name.replace(f"-{os.getpid()}-", "-999999999-"))
    dead.write_bytes(b"partial")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(target)])
    assert result.exit_code == 0 and not dead.exists() and target.exists()


def test_deflate_bomb_is_refused_before_inflating(tmp_path):
    """A Deflated Explicit VR file whose dataset inflates to 2 GiB (a few MB on disk) is never inflated whole."""
    import zlib

    ok = write_ct(tmp_path / "ok", make_volume(shape=(3, 12, 12)), transfer_syntax=pydicom.uid.DeflatedExplicitVRLittleEndian)
    assert read_volume(tmp_path / "ok").shape == (3, 12, 12)
    data = ok[0].read_bytes()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # (0002,0000) holds the meta length
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = b"".join(compressor.compress(bytes(1 << 24)) for _ in range(128)) + compressor.flush()
    path = tmp_path / "bomb" / "bomb.dcm"
    path.parent.mkdir()
    path.write_bytes(data[:meta_end] + bomb)
    done = _limited(f"from medsuite.io import scan_folder\ns = scan_folder({str(path.parent)!r})\nprint(s.skipped.to_dict('records'))",
                    memory_gb=1.0)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bomb.dcm" in done.stdout and "inflates to more than" in done.stdout and "unparsable" in done.stdout


def test_score_says_when_a_scored_series_may_lack_slices(tmp_path):
    """The unreadable end slice, as `medsuite score` meets it: the series is scored (the batch carries on) and
    its row in the database says it may lack slices."""
    import sqlite3

    import scoring_support as S

    from medsuite.pipelines.scoring import ScoreConfig, score

    cohort = S.make_cohort(tmp_path / "cohort", n_good=2, extras=False)
    files = sorted((tmp_path / "cohort" / "case000").rglob("*.dcm"))
    files[-1].write_bytes(files[-1].read_bytes()[:200])  # cut: unparsable, maybe a slice
    summary = score(ScoreConfig(bundle=S.make_bundle(tmp_path / "b", "series"), inputs=[tmp_path / "cohort"],
                                out=tmp_path / "out", workers=1, progress=False))
    assert summary.n_scored == 2, summary.lines()
    with sqlite3.connect(tmp_path / "out" / "medsuite.db") as conn:
        rows = dict(conn.execute("SELECT series_uid, reason FROM series WHERE status='scored'").fetchall())
    flagged = [uid for uid, reason in rows.items() if reason and "may lack slices" in reason]
    assert len(flagged) == 1 and flagged[0] in cohort["good"], rows
