"""Hostile bundles (issue 17 item 7): every size is bounded from bundle.json and the zip's central directory
before anything is built, read or inflated; unlisted files are never read; labels must match the model's
outputs; every kind of symbolic link or special file is refused; the commands print one clean line."""

from __future__ import annotations

import json
import os
import re
import resource
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from hostile_bundles import member_fifo, member_symlink_to_dev_zero, patch_zip_size
from process_support import env

from medsuite.data.blocks import SliceStack
from medsuite.learn import bundle as B
from medsuite.learn.bundle import BundleError, export_bundle, load_bundle
from medsuite.learn.models import build_model

KW = {"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2}
BLOCK = SliceStack(k=3, size=16)


def _export(path: Path) -> Path:
    torch.manual_seed(0)
    return export_bundle(path, build_model("slice_cnn", **KW), arch="slice_cnn", arch_kwargs=KW,
                         block_spec=BLOCK.spec(), labels=["benign", "malignant"], threshold=0.5, task="nodule",
                         extra_files={"index/cases.json": b'{"ids": []}'})


def _edit_meta(folder: Path, **changes) -> None:
    """What anyone can do: bundle.json is not covered by a hash (it holds the hashes of the other files)."""
    meta = json.loads((folder / "bundle.json").read_text())
    for dotted, value in changes.items():
        node = meta
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (folder / "bundle.json").write_text(json.dumps(meta))


def _relist(folder: Path) -> None:
    """Recompute the listed hashes after a file changed (what an attacker does)."""
    meta = json.loads((folder / "bundle.json").read_text())
    meta["files"] = {m: B._sha256((folder / m).read_bytes()) for m in meta["files"]}
    (folder / "bundle.json").write_text(json.dumps(meta))


@pytest.fixture
def good(tmp_path) -> Path:
    return _export(tmp_path / "good.bundle")


def test_a_good_bundle_loads(good):
    b = load_bundle(good)
    assert b.labels == ["benign", "malignant"] and b.block == BLOCK


@pytest.mark.parametrize("change, message", [
    ({"arch_kwargs__width": 4096}, "does not fit architecture"),
    ({"arch_kwargs__depth": 10000}, r"depth=10000 is outside 0..10; refused before building"),
    ({"arch_kwargs__width": 10**12}, "refused before building"),
    ({"block_spec__size": 1000000}, "block_spec gives samples of shape"),
    ({"block_spec__k": 100000}, "block_spec gives samples"),
    ({"labels": ["a", "b", "c"]}, "2 outputs but the bundle lists 3 labels"),
    ({"labels": ["a", "a"]}, "distinct"),
    ({"labels": ["x"] * 10**5}, "labels must be"),
    ({"threshold": 7}, "threshold"),
    ({"arch_kwargs__in_channels": 5}, "does not fit|cannot take"),
    ({"block_spec__k": 5}, "cannot take the samples"),
    ({"arch_kwargs__width": [1, 2]}, "must be a number"),
    ({"arch": "__import__"}, "unknown architecture"),
])
def test_bad_sizes_and_shapes_are_refused_before_building(good, change, message):
    _edit_meta(good, **change)
    with pytest.raises(BundleError, match=message):
        load_bundle(good)  # memory: test_memory_stays_flat_on_hostile_sizes


def test_memory_stays_flat_on_hostile_sizes(tmp_path):
    """Each of the issue's allocation attacks, in a fresh interpreter: peak RSS must not move by more than
    the small bundle itself (before: 3.6-7.3 GB)."""
    script = tmp_path / "probe.py"
    script.write_text(f"""
import json, resource, shutil, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_learn_bundle_hostile import _export, _edit_meta
from medsuite.learn.bundle import BundleError, load_bundle
root = __import__('pathlib').Path({str(tmp_path)!r})
base = _export(root / 'base.bundle')
load_bundle(base)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i, change in enumerate([{{'arch_kwargs__width': 4096}}, {{'arch_kwargs__width': 1024, 'arch_kwargs__depth': 10}},
                            {{'arch_kwargs__depth': 10000}}, {{'block_spec__size': 1000000}}]):
    b = root / f'h{{i}}.bundle'
    shutil.copytree(base, b)
    _edit_meta(b, **change)
    try:
        load_bundle(b)
        print('LOADED', change)
    except BundleError:
        pass
print('DELTA_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
""")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env(), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LOADED" not in res.stdout
    delta_kb = int(res.stdout.split("DELTA_KB")[1])
    assert delta_kb < 100_000, f"peak RSS grew by {delta_kb / 1024:.0f} MB"


def test_zip_bomb_member_is_refused_from_the_central_directory(good, tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(good.rglob("*")):
            if f.is_file():
                zf.writestr(f.relative_to(good).as_posix(), f.read_bytes())
        zf.writestr("bomb.bin", b"\0" * 2**20)
    patch_zip_size(z, "bomb.bin", 3 * 2**30)  # an unlisted 3 GiB member, as the central directory says
    assert zipfile.ZipFile(z).getinfo("bomb.bin").file_size == 3 * 2**30
    with pytest.raises(BundleError, match=r"at most .* are read \(refused before reading them\)"):
        load_bundle(z)

    z2 = tmp_path / "unlisted.zip"
    with zipfile.ZipFile(z2, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(good.rglob("*")):
            if f.is_file():
                zf.writestr(f.relative_to(good).as_posix(), f.read_bytes())
        zf.writestr("extra/payload.bin", b"\0" * 2**20)
    with pytest.raises(BundleError, match="not listed in bundle.json.*refused without reading them"):
        load_bundle(z2)


def test_listed_member_that_inflates_beyond_its_declared_size_stops_there(good, tmp_path):
    payload = b"\0" * (64 * 2**20)
    (good / "index" / "cases.json").write_bytes(payload)
    _relist(good)
    z = tmp_path / "liar.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(good.rglob("*")):
            zf.writestr(f.relative_to(good).as_posix(), f.read_bytes()) if f.is_file() else None
    patch_zip_size(z, "index/cases.json", 1000)  # declares 1000 bytes, inflates to 64 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BundleError, match="index/cases.json"):
        load_bundle(z)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # never inflated it all


def test_oversized_files_are_refused_before_reading(good):
    with open(good / "index" / "cases.json", "r+b") as fh:  # sparse: 600 MiB declared by the file system
        fh.truncate(600 * 2**20)
    with pytest.raises(BundleError, match=r"index/cases.json is 629,145,600 bytes; .* \(refused before reading it\)"):
        load_bundle(good)
    (good / "bundle.json").write_bytes(b" " * (17 * 2**20))
    with pytest.raises(BundleError, match="bundle.json is .* bytes"):
        load_bundle(good)


def test_forged_weights_header_is_refused_without_allocating(good):
    st = (good / "model.safetensors").read_bytes()
    n = int.from_bytes(st[:8], "little")
    header = json.loads(st[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [100000, 100000]
    raw = json.dumps(header).encode()
    (good / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + st[8 + n:])
    _relist(good)
    with pytest.raises(BundleError, match="model.safetensors"):
        load_bundle(good)


def test_nested_json_and_too_many_files_are_clean_errors(good):
    (good / "bundle.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(good)
    for i in range(B.MAX_FILES + 1):
        (good / f"f{i}").write_bytes(b"")
    with pytest.raises(BundleError, match="more than 64 files"):
        load_bundle(good)


def _symlinked_folder(good: Path, tmp: Path) -> Path:
    link = tmp / "link.bundle"
    link.symlink_to(good)
    return link


def _symlinked_weights(good: Path, tmp: Path) -> Path:
    real = tmp / "elsewhere.safetensors"
    real.write_bytes((good / "model.safetensors").read_bytes())
    (good / "model.safetensors").unlink()
    (good / "model.safetensors").symlink_to(real)
    return good


def _symlinked_meta(good: Path, tmp: Path) -> Path:
    real = tmp / "meta.json"
    real.write_bytes((good / "bundle.json").read_bytes())
    (good / "bundle.json").unlink()
    (good / "bundle.json").symlink_to(real)
    return good


def _symlinked_subfolder(good: Path, tmp: Path) -> Path:
    real = tmp / "index-real"
    (good / "index").rename(real)
    (good / "index").symlink_to(real, target_is_directory=True)
    return good


def _symlinked_zip(good: Path, tmp: Path) -> Path:
    z = tmp / "real.zip"
    export_bundle(z, build_model("slice_cnn", **KW), arch="slice_cnn", arch_kwargs=KW, block_spec=BLOCK.spec(),
                  labels=["benign", "malignant"], threshold=0.5, task="nodule")
    link = tmp / "link.zip"
    link.symlink_to(z)
    return link


def _zip_with_symlink_entry(good: Path, tmp: Path) -> Path:
    z = tmp / "entry.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(good.rglob("*")):
            if f.is_file():
                zf.writestr(f.relative_to(good).as_posix(), f.read_bytes())
        info = zipfile.ZipInfo("index/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return z


def _fifo_bundle(good: Path, tmp: Path) -> Path:
    fifo = tmp / "fifo.zip"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("make, message", [
    (_symlinked_folder, "is a symbolic link"),
    (_symlinked_weights, "model.safetensors is a symbolic link"),
    (_symlinked_meta, "bundle.json is a symbolic link"),
    (_symlinked_subfolder, "index is a symbolic link"),
    (member_symlink_to_dev_zero, "index/cases.json is a symbolic link"),
    (member_fifo, "not a regular file"),
    (_symlinked_zip, "is a symbolic link"),
    (_zip_with_symlink_entry, "symbolic link inside the zip"),
    (_fifo_bundle, "not a regular file or folder"),
])
def test_every_symlink_variant_and_special_file_is_refused(good, tmp_path, make, message):
    target = make(good, tmp_path)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_bundle(target)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=600)  # a hang guard (a FIFO read or /dev/zero would block for ever), not a speed check
    assert outcome, "load_bundle blocked on a special file"
    assert isinstance(outcome[0], BundleError) and re.search(message, str(outcome[0])), outcome


def _cli(*args: str, cwd: Path):
    from typer.testing import CliRunner

    from medsuite.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


def test_evaluate_explain_and_score_print_one_clean_line(good, tmp_path):
    _edit_meta(good, labels=["a", "b", "c"])
    table = tmp_path / "t.csv"
    table.write_text("series_uid,patient_id,x_mm,y_mm,z_mm,diameter_mm,label\n1.2,p,0,0,0,5,a\n")
    (tmp_path / "dicom").mkdir()
    runs = {
        "evaluate": _cli("evaluate", str(good), str(table), "--dicom-root", str(tmp_path / "dicom"),
                         "--out", str(tmp_path / "ev"), cwd=tmp_path),
        "explain": _cli("explain", str(good), "--series", str(tmp_path / "dicom"), "--out", str(tmp_path / "ex"),
                        cwd=tmp_path),
        "score": _cli("score", str(good), str(tmp_path / "dicom"), "--out", str(tmp_path / "sc"), "--nodules",
                      str(table), cwd=tmp_path),
    }
    for name, res in runs.items():
        err = res.stderr.strip()
        assert res.exception is None or isinstance(res.exception, SystemExit), (name, res.exception)
        assert res.exit_code in (2, 3), (name, res.exit_code, err)
        assert "Traceback" not in err and err.count("\n") == 0, (name, err)
        assert "3 labels" in err and str(good) in err, (name, err)


def test_pinned_sha256_refuses_any_other_bundle(good, tmp_path):
    pinned = load_bundle(good).sha256
    assert load_bundle(good, expected_sha256=pinned.upper()).sha256 == pinned
    other = _export(tmp_path / "other.bundle")  # same weights, new created_at: a different bundle
    _edit_meta(other, threshold=0.9)
    with pytest.raises(BundleError, match="not the bundle you pinned"):
        load_bundle(other, expected_sha256=pinned)
