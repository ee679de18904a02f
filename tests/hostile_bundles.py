"""A set of hostile model bundles (issue 17 item 7), built from one good bundle: lying sizes and shapes in
bundle.json, zip bombs and zip tricks, links and special files, forged weights, broken predictor sections and
case indexes. Each builder gets a fresh copy of the good bundle folder and a scratch folder and returns the
path to hand to ``load_bundle`` / ``medsuite score|evaluate|explain`` / the viewer; every one of them must be
refused with one line naming the bundle and the reason (tests/test_learn_bundle_hostile_set.py).

Builders are deterministic (seeded), small on disk (the huge files are sparse) and fast."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

Builder = Callable[[Path, Path], Path]
SEED = 17


# ------------------------------------------------------------------------------------------ helpers
def meta(folder: Path) -> dict:
    return json.loads((folder / "bundle.json").read_text())


def write_meta(folder: Path, m: dict) -> None:
    (folder / "bundle.json").write_text(json.dumps(m))


def edit(folder: Path, path: str, value) -> None:
    """Set a dotted key of bundle.json (what anyone can do: bundle.json holds the other files' hashes)."""
    m = meta(folder)
    node = m
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    write_meta(folder, m)


def relist(folder: Path) -> None:
    """Recompute every listed hash after files changed (what an attacker does)."""
    m = meta(folder)
    m["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in m["files"]}
    write_meta(folder, m)


def zip_folder(folder: Path, target: Path, *, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
               compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(target, "w", compression=compression) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.writestr(f.relative_to(folder).as_posix(), f.read_bytes())
        for info, data in extra:
            zf.writestr(info, data)
    return target


def patch_zip_size(path: Path, member: str, size: int) -> None:
    """Make the local header and the central directory declare ``size`` (uncompressed) for ``member``."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = 0
        while (pos := data.find(sig, pos)) >= 0:
            name_at = pos + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[pos + off:pos + off + 4] = struct.pack("<I", size)
            pos += 4
    path.write_bytes(bytes(data))


def safetensors_header(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def safetensors_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


# ------------------------------------------------------------------------------- bundle.json sizes
def _set(path: str, value) -> Builder:
    def build(b: Path, tmp: Path) -> Path:
        edit(b, path, value)
        return b
    build.__name__ = f"set {path}={str(value)[:30]}"
    return build


def _raw_meta(text: bytes) -> Builder:
    def build(b: Path, tmp: Path) -> Path:
        (b / "bundle.json").write_bytes(text)
        return b
    return build


def _meta_text_edit(old: str, new: str) -> Builder:
    """Edit bundle.json's text (for what json.dumps cannot write: NaN, duplicate keys)."""
    def build(b: Path, tmp: Path) -> Path:
        text = (b / "bundle.json").read_text()
        assert old in text, old
        (b / "bundle.json").write_text(text.replace(old, new, 1))
        return b
    return build


def duplicate_labels_key(b: Path, tmp: Path) -> Path:
    text = json.dumps(meta(b))
    (b / "bundle.json").write_text(text[:-1] + ', "labels": ["benign", "malignant", "third"]}')
    return b


def deeply_nested_meta(b: Path, tmp: Path) -> Path:
    m = meta(b)
    text = json.dumps(m)
    (b / "bundle.json").write_text(text[:-1] + ', "metrics2": ' + "[" * 200_000 + "]" * 200_000 + "}")
    return b


def huge_meta(b: Path, tmp: Path) -> Path:
    with open(b / "bundle.json", "r+b") as fh:  # sparse: 1 GiB by the file system's account
        fh.truncate(2**30)
    return b


def non_utf8_meta(b: Path, tmp: Path) -> Path:
    text = json.dumps(meta(b)).encode()
    (b / "bundle.json").write_bytes(text.replace(b'"name": "', b'"name": "\xff\xfe\xc3(', 1))
    return b


# ---------------------------------------------------------------------------------- files listing
def missing_weights(b: Path, tmp: Path) -> Path:
    (b / "model.safetensors").unlink()
    return b


def extra_unlisted_file(b: Path, tmp: Path) -> Path:
    (b / "index" / "payload.bin").write_bytes(os.urandom(1024))
    return b


def hash_mismatch(b: Path, tmp: Path) -> Path:
    data = bytearray((b / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (b / "model.safetensors").write_bytes(bytes(data))
    return b


def listed_outside_path(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["files"]["../../../../etc/passwd"] = "0" * 64
    write_meta(b, m)
    return b


def listed_absolute_path(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["files"]["/etc/passwd"] = "0" * 64
    write_meta(b, m)
    return b


def files_not_a_mapping(b: Path, tmp: Path) -> Path:
    edit(b, "files", ["model.safetensors"])
    return b


def pickle_as_safetensors(b: Path, tmp: Path) -> Path:
    import torch

    torch.save({"w": torch.zeros(3)}, b / "model.safetensors")  # a zip-format torch checkpoint
    relist(b)
    return b


def protocol0_pickle_as_safetensors(b: Path, tmp: Path) -> Path:
    (b / "model.safetensors").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    relist(b)
    return b


def pickle_extra_file(b: Path, tmp: Path) -> Path:
    (b / "index" / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    m = meta(b)
    m["files"]["index/extra.pkl"] = hashlib.sha256(b"\x80\x04K\x01.").hexdigest()
    write_meta(b, m)
    return b


# ----------------------------------------------------------------------------------- weights file
def huge_header_length(b: Path, tmp: Path) -> Path:
    data = (b / "model.safetensors").read_bytes()
    (b / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + data[8:])
    relist(b)
    return b


def forged_weights_shape(b: Path, tmp: Path) -> Path:
    header, payload = safetensors_header((b / "model.safetensors").read_bytes())
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [100_000, 100_000]
    (b / "model.safetensors").write_bytes(safetensors_bytes(header, payload))
    relist(b)
    return b


def lying_offsets(b: Path, tmp: Path) -> Path:
    """Shapes that fit the architecture, offsets that point past the data."""
    header, payload = safetensors_header((b / "model.safetensors").read_bytes())
    for entry in header.values():
        if isinstance(entry, dict) and "data_offsets" in entry:
            entry["data_offsets"] = [0, len(payload) * 4]
    (b / "model.safetensors").write_bytes(safetensors_bytes(header, payload))
    relist(b)
    return b


def sparse_giant_weights(b: Path, tmp: Path) -> Path:
    """A 1 GiB weights file (sparse zeros after the real header) listed with a matching hash: within the
    size limit, so only its size against what the architecture needs can refuse it unread."""
    path = b / "model.safetensors"
    size = 2**30
    with open(path, "r+b") as fh:
        fh.truncate(size)
    m = meta(b)
    m["files"]["model.safetensors"] = "f" * 64  # computing the real hash takes seconds; it is never reached
    write_meta(b, m)
    return b


def weights_dtype_f64(b: Path, tmp: Path) -> Path:
    import torch
    from safetensors.torch import load, save

    state = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in load((b / "model.safetensors").read_bytes()).items()}
    (b / "model.safetensors").write_bytes(save(state))
    relist(b)
    return b


def weights_missing_tensor(b: Path, tmp: Path) -> Path:
    from safetensors.torch import load, save

    state = load((b / "model.safetensors").read_bytes())
    state.pop(sorted(state)[0])
    (b / "model.safetensors").write_bytes(save(state))
    relist(b)
    return b


def weights_huge_metadata(b: Path, tmp: Path) -> Path:
    header, payload = safetensors_header((b / "model.safetensors").read_bytes())
    header["__metadata__"] = {f"k{i}": "v" * 1000 for i in range(20_000)}  # 20 MB of header
    (b / "model.safetensors").write_bytes(safetensors_bytes(header, payload))
    relist(b)
    return b


# ---------------------------------------------------------------------------------------- zips
def zip_bomb_unlisted(b: Path, tmp: Path) -> Path:
    z = zip_folder(b, tmp / "bomb.zip", extra=[("bomb.bin", b"\0" * 2**20)])
    patch_zip_size(z, "bomb.bin", 3 * 2**30 + 17)
    return z


def zip_lying_listed_member(b: Path, tmp: Path) -> Path:
    (b / "index" / "cases.json").write_bytes(b" " * (64 * 2**20))
    relist(b)
    z = zip_folder(b, tmp / "liar.zip")
    patch_zip_size(z, "index/cases.json", 1000)
    return z


def zip_nested(b: Path, tmp: Path) -> Path:
    inner = zip_folder(b, tmp / "inner.zip")
    outer = tmp / "nested.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "inner.zip")
    return outer


def zip_many_members(b: Path, tmp: Path) -> Path:
    return zip_folder(b, tmp / "many.zip", extra=[(f"x/{i}", b"") for i in range(200_000)],
                      compression=zipfile.ZIP_STORED)


def zip_long_names(b: Path, tmp: Path) -> Path:
    return zip_folder(b, tmp / "long.zip", extra=[("a/" * 30_000 + "x", b"1")])


def zip_slip(b: Path, tmp: Path) -> Path:
    return zip_folder(b, tmp / "slip.zip", extra=[("../../../../tmp/owned.txt", b"owned")])


def zip_absolute(b: Path, tmp: Path) -> Path:
    return zip_folder(b, tmp / "abs.zip", extra=[("/tmp/owned.txt", b"owned")])


def zip_backslash(b: Path, tmp: Path) -> Path:
    return zip_folder(b, tmp / "bs.zip", extra=[("..\\..\\owned.txt", b"owned")])


def zip_symlink_entry(b: Path, tmp: Path) -> Path:
    info = zipfile.ZipInfo("index/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zip_folder(b, tmp / "link.zip", extra=[(info, b"/etc/passwd")])


def zip_duplicate_member(b: Path, tmp: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        return zip_folder(b, tmp / "dup.zip", extra=[("bundle.json", b'{"format_version": 1}')])


def zip_truncated(b: Path, tmp: Path) -> Path:
    z = zip_folder(b, tmp / "cut.zip")
    data = z.read_bytes()
    z.write_bytes(data[: len(data) // 2])
    return z


def zip_bzip2_bomb_listed(b: Path, tmp: Path) -> Path:
    """A listed member, honest sizes, but 900 MB of zeros: refused by its size before inflating."""
    z = zip_folder(b, tmp / "bz.zip", compression=zipfile.ZIP_BZIP2)
    patch_zip_size(z, "index/cases.json", 900 * 2**20)
    return z


def not_a_zip(b: Path, tmp: Path) -> Path:
    z = tmp / "random.zip"
    z.write_bytes(random.Random(SEED).randbytes(4096))
    return z


# ---------------------------------------------------------------------------- links, special files
def symlinked_root(b: Path, tmp: Path) -> Path:
    link = tmp / "link.bundle"
    link.symlink_to(b)
    return link


def _cases_json_replaced(b: Path, make: Callable[[Path], None]) -> Path:
    """The bundle with its case index ``index/cases.json`` replaced by what ``make`` puts at that path."""
    member = b / "index" / "cases.json"
    member.unlink()
    make(member)
    return b


def member_symlink_to_dev_zero(b: Path, tmp: Path) -> Path:
    return _cases_json_replaced(b, lambda m: m.symlink_to("/dev/zero"))


def member_symlink_outside(b: Path, tmp: Path) -> Path:
    real = tmp / "weights-elsewhere"
    shutil.move(b / "model.safetensors", real)
    (b / "model.safetensors").symlink_to(real)
    return b


def member_fifo(b: Path, tmp: Path) -> Path:
    return _cases_json_replaced(b, os.mkfifo)


def root_fifo(b: Path, tmp: Path) -> Path:
    fifo = tmp / "fifo.bundle"
    os.mkfifo(fifo)
    return fifo


def root_dev_zero(b: Path, tmp: Path) -> Path:
    return Path("/dev/zero")


def member_hardlink_changed(b: Path, tmp: Path) -> Path:
    """A hard link to a file outside the bundle, which its owner then changes: the hash no longer matches."""
    outside = tmp / "outside.bin"
    shutil.copy(b / "model.safetensors", outside)
    (b / "model.safetensors").unlink()
    os.link(outside, b / "model.safetensors")
    with open(outside, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x00")
    return b


def deep_folders(b: Path, tmp: Path) -> Path:
    deep = b.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"")
    return b


def many_files(b: Path, tmp: Path) -> Path:
    for i in range(5000):
        (b / f"f{i}").write_bytes(b"")
    return b


def missing_root(b: Path, tmp: Path) -> Path:
    return tmp / "no-such.bundle"


# ------------------------------------------------------------------------- predictor and case index
def tta_flood(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["predictor"]["tta"] = {"flips": [[-1]] * 1_000_000}
    write_meta(b, m)
    return b


def tta_bad_axis(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["predictor"]["tta"] = {"flips": [[-99]]}
    write_meta(b, m)
    return b


def predictor_positive_unknown(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["predictor"]["positive"] = "cancer"
    write_meta(b, m)
    return b


def predictor_labels_differ(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["predictor"]["labels"] = ["malignant", "benign"]
    write_meta(b, m)
    return b


def predictor_not_a_mapping(b: Path, tmp: Path) -> Path:
    edit(b, "predictor", "x" * 100)
    return b


def calibration_flood(b: Path, tmp: Path) -> Path:
    m = meta(b)
    m["predictor"]["calibration"] = {"method": "isotonic", "x": [0.5] * 2_000_000, "y": [0.5] * 2_000_000}
    write_meta(b, m)
    return b


def index_count_mismatch(b: Path, tmp: Path) -> Path:
    cases = json.loads((b / "index" / "cases.json").read_text())
    for key, value in list(cases.items()):
        if isinstance(value, list) and value:
            cases[key] = value[:-3]
    (b / "index" / "cases.json").write_text(json.dumps(cases))
    relist(b)
    return b


def index_embeddings_forged_shape(b: Path, tmp: Path) -> Path:
    header, payload = safetensors_header((b / "index" / "embeddings.safetensors").read_bytes())
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2**31, 2**20]
    (b / "index" / "embeddings.safetensors").write_bytes(safetensors_bytes(header, payload))
    relist(b)
    return b


def index_cases_not_json(b: Path, tmp: Path) -> Path:
    (b / "index" / "cases.json").write_bytes(b"\x80\x04\x95 not json")
    relist(b)
    return b


VARIANTS: list[tuple[str, Builder]] = [
    # sizes and shapes in bundle.json
    ("width 4096", _set("arch_kwargs.width", 4096)),
    ("depth 10000", _set("arch_kwargs.depth", 10_000)),
    ("width negative", _set("arch_kwargs.width", -16)),
    ("width float", _set("arch_kwargs.width", 4.5)),
    ("width string", _set("arch_kwargs.width", "4")),
    ("width NaN", _meta_text_edit('"width": 4', '"width": NaN')),
    ("width 1e400", _meta_text_edit('"width": 4', '"width": 1e400')),
    ("n_classes 10^9", _set("arch_kwargs.n_classes", 10**9)),
    ("n_classes 0", _set("arch_kwargs.n_classes", 0)),
    ("block size 10^6", _set("block_spec.size", 10**6)),
    ("block size negative", _set("block_spec.size", -16)),
    ("block size float", _set("block_spec.size", 16.5)),
    ("block size string", _set("block_spec.size", "16")),
    ("block size NaN", _meta_text_edit('"size": 16', '"size": NaN')),
    ("block k 10^6", _set("block_spec.k", 10**6)),
    ("block spacing 0", _set("block_spec.spacing_mm", 0)),
    ("block spacing -inf", _meta_text_edit('"spacing_mm": 2.0', '"spacing_mm": -Infinity')),
    ("block pixel 1e-9", _set("block_spec.pixel_mm", 1e-9)),
    ("block window bogus", _set("block_spec.window", ["lung"] * 100_000)),
    ("block type unknown", _set("block_spec.type", "os.system")),
    ("block spec null", _set("block_spec", None)),
    ("3 labels on 2 outputs", _set("labels", ["a", "b", "c"])),
    ("10^5 labels", _set("labels", [f"l{i}" for i in range(100_000)])),
    ("labels not strings", _set("labels", [0, 1])),
    ("threshold NaN", _meta_text_edit('"threshold": 0.5', '"threshold": NaN')),
    ("threshold string", _set("threshold", "0.5")),
    ("format_version huge", _set("format_version", 10**30)),
    ("format_version string", _set("format_version", "1")),
    ("task unknown", _set("task", "segmentation")),
    ("arch unknown", _set("arch", "__import__")),
    ("eligibility bogus", _set("eligibility", {"min_slices": "many", "modality": 7})),
    # bundle.json itself
    ("bundle.json deeply nested", deeply_nested_meta),
    ("bundle.json 1 GiB (sparse)", huge_meta),
    ("bundle.json duplicate keys", duplicate_labels_key),
    ("bundle.json non-UTF-8", non_utf8_meta),
    ("bundle.json a list", _raw_meta(b"[1, 2, 3]")),
    ("bundle.json empty", _raw_meta(b"")),
    # the files it lists
    ("weights missing", missing_weights),
    ("extra unlisted file", extra_unlisted_file),
    ("hash mismatch", hash_mismatch),
    ("listed ../ path", listed_outside_path),
    ("listed absolute path", listed_absolute_path),
    ("files not a mapping", files_not_a_mapping),
    ("torch.save renamed .safetensors", pickle_as_safetensors),
    ("protocol-0 pickle renamed .safetensors", protocol0_pickle_as_safetensors),
    ("listed .pkl extra", pickle_extra_file),
    # the weights
    ("safetensors header length 2^62", huge_header_length),
    ("weights shape forged", forged_weights_shape),
    ("weights offsets lie", lying_offsets),
    ("weights 1 GiB sparse", sparse_giant_weights),
    ("weights float64", weights_dtype_f64),
    ("weights missing tensor", weights_missing_tensor),
    ("weights 20 MB header", weights_huge_metadata),
    # zips
    ("zip bomb: unlisted 3 GiB member", zip_bomb_unlisted),
    ("zip member lies about its size", zip_lying_listed_member),
    ("zip nested", zip_nested),
    ("zip 200k members", zip_many_members),
    ("zip 60k-char name", zip_long_names),
    ("zip slip ../", zip_slip),
    ("zip absolute name", zip_absolute),
    ("zip backslash name", zip_backslash),
    ("zip symlink entry", zip_symlink_entry),
    ("zip duplicate member", zip_duplicate_member),
    ("zip truncated", zip_truncated),
    ("zip bzip2 member declared 900 MiB", zip_bzip2_bomb_listed),
    ("not a zip", not_a_zip),
    # links and special files
    ("symlinked bundle root", symlinked_root),
    ("member symlink to /dev/zero", member_symlink_to_dev_zero),
    ("member symlink outside", member_symlink_outside),
    ("member FIFO", member_fifo),
    ("bundle is a FIFO", root_fifo),
    ("bundle is /dev/zero", root_dev_zero),
    ("hard link changed outside", member_hardlink_changed),
    ("folders 60 deep", deep_folders),
    ("5000 files", many_files),
    ("bundle missing", missing_root),
    # predictor section and case index
    ("tta 10^6 flips", tta_flood),
    ("tta axis -99", tta_bad_axis),
    ("predictor positive unknown", predictor_positive_unknown),
    ("predictor labels differ", predictor_labels_differ),
    ("predictor not a mapping", predictor_not_a_mapping),
    ("calibration 2M points", calibration_flood),
    ("index counts disagree", index_count_mismatch),
    ("index embeddings shape forged", index_embeddings_forged_shape),
    ("index cases.json not JSON", index_cases_not_json),
]


def build(name: str, good: Path, work: Path) -> Path:
    """The variant ``name`` built in ``work`` (a fresh copy of the folder bundle ``good`` is its base)."""
    builder = dict(VARIANTS)[name]
    work.mkdir(parents=True, exist_ok=True)
    base = work / "b.bundle"
    shutil.copytree(good, base)
    random.seed(SEED)
    return builder(base, work)
