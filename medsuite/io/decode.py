"""Pixel decoding: stored values of one DICOM instance as a ``(frames, rows, cols)`` array.

Uncompressed (native) little/big-endian data is read straight from the file with one ``readinto`` at the
offset of the Pixel Data element, which avoids pydicom's per-file pixel handling and is what makes reading
a 300-slice CT fast. Compressed and deflated syntaxes go through pydicom's decoder plugins; when none is
installed for a syntax the error names the syntax and the package that decodes it.
"""

from __future__ import annotations

import struct
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import uid as uids

from medsuite.io.errors import MissingDecoderError, PixelDataError
from medsuite.io.native_stderr import native_stderr_captured

NATIVE_SYNTAXES = frozenset(
    {uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian}
)

# Which package decodes each compressed syntax (shown in errors when none is installed).
DECODER_PACKAGES: dict[str, str] = {
    uids.DeflatedExplicitVRLittleEndian: "pydicom (built-in zlib)",
    uids.RLELossless: "pydicom (built-in), or pylibjpeg-rle",
    uids.JPEGBaseline8Bit: "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    uids.JPEGExtended12Bit: "pylibjpeg + pylibjpeg-libjpeg",
    uids.JPEGLossless: "pylibjpeg + pylibjpeg-libjpeg",
    uids.JPEGLosslessSV1: "pylibjpeg + pylibjpeg-libjpeg",
    uids.JPEGLSLossless: "pyjpegls, or pylibjpeg + pylibjpeg-libjpeg",
    uids.JPEGLSNearLossless: "pyjpegls, or pylibjpeg + pylibjpeg-libjpeg",
    uids.JPEG2000Lossless: "pylibjpeg + pylibjpeg-openjpeg",
    uids.JPEG2000: "pylibjpeg + pylibjpeg-openjpeg",
    uids.HTJ2KLossless: "pylibjpeg + pylibjpeg-openjpeg",
    uids.HTJ2KLosslessRPCL: "pylibjpeg + pylibjpeg-openjpeg",
    uids.HTJ2K: "pylibjpeg + pylibjpeg-openjpeg",
}

PIXEL_DATA_TAG = 0x7FE00010


@lru_cache(maxsize=256)
def syntax_name(transfer_syntax: str) -> str:
    """A readable name for a transfer syntax UID (the UID itself when pydicom does not know it)."""
    name = uids.UID(transfer_syntax).name
    return name if name and name != transfer_syntax else f"unknown transfer syntax {transfer_syntax}"


def check_decoder(transfer_syntax: str, where: str) -> None:
    """Raise `MissingDecoderError` (naming ``where``, the syntax and the package) if it cannot be decoded."""
    if transfer_syntax in NATIVE_SYNTAXES or transfer_syntax == uids.DeflatedExplicitVRLittleEndian:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        package = DECODER_PACKAGES.get(transfer_syntax, "no known Python package")
        raise MissingDecoderError(
            f"{where}: pixel data uses {syntax_name(transfer_syntax)} ({transfer_syntax}) and no installed "
            f"decoder handles it; install {package}"
        )


def native_dtype(bits_allocated: int, signed: bool, big_endian: bool) -> np.dtype:
    """numpy dtype of stored values in an uncompressed Pixel Data element."""
    if bits_allocated not in (8, 16, 32):
        raise ValueError(f"BitsAllocated {bits_allocated} is not supported (8, 16 or 32)")
    kind = "i" if signed else "u"
    order = ">" if big_endian and bits_allocated > 8 else "<"
    return np.dtype(f"{order}{kind}{bits_allocated // 8}")


def pixel_element_length(fp: BinaryIO, transfer_syntax: str, path: str | Path) -> int:
    """Read the Pixel Data element header at the current position; return the value length in bytes.

    ``fp`` must sit where ``dcmread(..., stop_before_pixels=True)`` left it (just before the tag).
    """
    big = transfer_syntax == uids.ExplicitVRBigEndian
    endian = ">" if big else "<"
    head = fp.read(8)
    if len(head) < 8:
        raise PixelDataError(f"{path}: the file ends before its Pixel Data element (truncated or no image)")
    group, elem = struct.unpack(f"{endian}HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA_TAG:
        raise PixelDataError(
            f"{path}: expected Pixel Data (7FE0,0010) but found ({group:04X},{elem:04X}); "
            "float/double pixel data is not supported"
        )
    if transfer_syntax == uids.ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", head[4:8])
    else:
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV"):
            extra = fp.read(4)
            if len(extra) < 4:
                raise PixelDataError(f"{path}: the Pixel Data element header is truncated")
            (length,) = struct.unpack(f"{endian}I", extra)
        else:
            (length,) = struct.unpack(f"{endian}H", head[6:8])
    if length == 0xFFFFFFFF:
        raise PixelDataError(f"{path}: uncompressed Pixel Data has undefined length (malformed file)")
    return int(length)


def read_native(
    fp: BinaryIO,
    *,
    path: str | Path,
    transfer_syntax: str,
    frames: int,
    rows: int,
    cols: int,
    bits_allocated: int,
    signed: bool,
) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` of an uncompressed instance, read at the Pixel Data element."""
    length = pixel_element_length(fp, transfer_syntax, path)
    dtype = native_dtype(bits_allocated, signed, transfer_syntax == uids.ExplicitVRBigEndian)
    expected = frames * rows * cols * dtype.itemsize
    if length < expected:
        raise PixelDataError(
            f"{path}: Pixel Data holds {length} bytes but {frames} frame(s) of {rows}x{cols} at "
            f"{bits_allocated} bits need {expected}"
        )
    out = np.empty((frames, rows, cols), dtype=dtype)
    got = fp.readinto(memoryview(out).cast("B"))
    if got != expected:
        raise PixelDataError(f"{path}: the file is truncated ({got} of {expected} pixel bytes present)")
    return out


def decode_dataset(ds, *, path: str | Path, transfer_syntax: str) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` of a full (compressed or deflated) pydicom dataset."""
    check_decoder(transfer_syntax, str(path))
    if "PixelData" not in ds:
        raise PixelDataError(f"{path}: no Pixel Data element")
    # RLE is decoded by pylibjpeg-rle, written in Rust: its panic text on corrupt data is kept off the terminal
    # (one clean error instead). Only there: the capture redirects the whole process's stderr while it runs.
    captured = native_stderr_captured() if transfer_syntax == uids.RLELossless else nullcontext()
    try:
        with captured:
            arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - plugins raise many types; Rust ones panic (a BaseException)
        raise PixelDataError(
            f"{path}: cannot decode {syntax_name(transfer_syntax)} pixel data: {type(exc).__name__}: {exc}"
        ) from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise PixelDataError(f"{path}: colour images (SamplesPerPixel > 1) are not volumes")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.size != frames * rows * cols:
        raise PixelDataError(
            f"{path}: {syntax_name(transfer_syntax)} pixel data decoded to {arr.size} values but {frames} "
            f"frame(s) of {rows}x{cols} need {frames * rows * cols}"
        )
    return arr.reshape(frames, rows, cols)


_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_OTHER_PIXEL_TAGS = {0x7FE00008: "float", 0x7FE00009: "double float"}


def check_encapsulated(fp: BinaryIO, file_size: int, n_frames: int) -> list[tuple[str, str]]:
    """Walk the item headers of compressed Pixel Data at ``fp`` (at its tag) without reading the fragments.

    Returns ``(kind, reason)`` pairs, kind being 'truncated', 'length' or 'missing': a defined length
    (compressed data must be encapsulated, so a defined length means a corrupt file that decoders would
    misread), fragments running past the end of the file, no sequence delimiter, fewer fragments than
    frames. Cheap: one 8-byte read per fragment.
    """
    head = fp.read(12)
    if len(head) < 8:
        return [("missing", "no Pixel Data element (the file ends before it)")]
    group, elem = struct.unpack("<HH", head[:4])
    tag = group << 16 | elem
    if tag != PIXEL_DATA_TAG:
        kind = _OTHER_PIXEL_TAGS.get(tag)
        if kind:
            return [("length", f"{kind} pixel data is not supported")]
        return [("missing", f"no Pixel Data element (found ({group:04X},{elem:04X}) where it should be)")]
    if len(head) < 12:
        return [("truncated", "the file ends inside the Pixel Data element header")]
    (length,) = struct.unpack("<I", head[8:12])
    if length != 0xFFFFFFFF:
        return [("length", f"compressed pixel data must be encapsulated (undefined length) but its element says {length} bytes: malformed file")]
    pos = fp.tell()
    fragments, first = 0, True
    while True:
        item = fp.read(8)
        if len(item) < 8:
            return [("truncated", f"compressed pixel data cut short: the file ends after {fragments} fragment(s) "
                     f"at {file_size} bytes, without the sequence delimiter")]
        group, elem, length = struct.unpack("<HHI", item)
        tag = group << 16 | elem
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            return [("length", f"malformed compressed pixel data: item ({group:04X},{elem:04X}) at byte {pos}")]
        if pos + 8 + length > file_size:
            return [("truncated", f"compressed pixel data cut short: fragment {fragments + 1} needs {length} bytes, "
                     f"{max(0, file_size - pos - 8)} present (file of {file_size} bytes)")]
        fp.seek(length, 1)
        pos += 8 + length
        fragments += 0 if first else 1
        first = False
    if fragments < n_frames:
        return [("length", f"{n_frames} frame(s) but only {fragments} compressed fragment(s)")]
    return []


def fix_bits_stored(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Clear unused high bits (or sign-extend) when BitsStored < BitsAllocated, e.g. 12 of 16 bits."""
    bits_allocated = stored.dtype.itemsize * 8
    if bits_stored >= bits_allocated or bits_stored <= 0:
        return stored
    if signed:
        shift = bits_allocated - bits_stored
        return (stored << shift) >> shift
    return stored & np.array((1 << bits_stored) - 1, dtype=stored.dtype)
