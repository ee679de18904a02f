"""Fast header reader for uncompressed little-endian DICOM files: a pydicom `Dataset` plus where the pixels are.

``dcmread(stop_before_pixels=True)`` costs a few milliseconds per file in Python bookkeeping, which is most
of the time taken to read a CT series. This module walks the element headers of a file's first bytes with
`struct` and hands pydicom the top-level elements as unconverted ``RawDataElement``s, so that values keep
pydicom's exact semantics (character sets, ambiguous VRs) but are converted only when asked for. It also
returns the byte offset and length of the Pixel Data value, so pixels can be read straight into an array.

Anything unusual returns None and the caller uses pydicom: no 'DICM' preamble, big endian, deflated or
compressed syntaxes, enhanced multi-frame objects (their functional-group sequences), malformed lengths.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset

_FAST_SYNTAXES = frozenset({uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian})
# Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})  # fmt: skip
_PIXEL_DATA = 0x7FE00010
_FIRST_PIXEL_TAG = 0x7FE00008  # float, double float, then (integer) Pixel Data
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Sequences that make a file an enhanced multi-frame object: pydicom parses those.
_FUNCTIONAL_GROUPS = frozenset({0x52009229, 0x52009230})
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005
# SpecificCharacterSet values whose decoding is one Python codec (as pydicom maps them).
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_FIRST_READ = 16384
_MAX_HEADER = 64 << 20

_VR_NAMES = {vr: vr.decode() for vr in (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV")}  # fmt: skip
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_IMPLICIT_HEAD = struct.Struct("<HHI")
_EXPLICIT_HEAD = struct.Struct("<HH2sH")


class _NeedMore(Exception):
    """The header runs past the bytes read so far."""


class _Unsupported(Exception):
    """A structure this reader leaves to pydicom."""


@dataclass(frozen=True)
class RawHeader:
    """Unconverted top-level header elements and the Pixel Data value's offset and length in bytes.

    Sequences (other than the functional groups, which make the reader give up) are left out: slices
    need none of them.
    """

    elements: dict[int, RawDataElement]
    meta: dict[int, RawDataElement]
    transfer_syntax: str
    pixel_offset: int | None  # None: the file has no Pixel Data element
    pixel_length: int
    file_size: int

    def dataset(self) -> Dataset:
        """A pydicom `Dataset` of every element, with ``file_meta``; values are converted when read."""
        ds = Dataset(dict(self.elements))
        ds.set_original_encoding(self.transfer_syntax == uids.ImplicitVRLittleEndian, True)
        ds.file_meta = FileMetaDataset(self.meta)
        return ds

    def text(self, tag: int) -> str | None:
        """A single-valued text element (LO/SH) decoded as pydicom would, for the default, Latin-1 and UTF-8
        character sets; None when pydicom must decide (other character sets, several values, bad bytes).
        """
        charset = self.elements.get(_CHARSET)
        name = charset.value.decode("latin-1").strip(" \x00") if charset is not None and charset.value else ""
        codec = _SIMPLE_CHARSETS.get(name)
        elem = self.elements.get(tag)
        if codec is None or elem is None or b"\\" in elem.value:
            return None if codec is None or elem is not None else ""
        try:
            return elem.value.decode(codec).rstrip("\x00 ")
        except UnicodeDecodeError:
            return None

    def sop_class(self) -> str:
        """SOPClassUID, or the file meta's MediaStorageSOPClassUID when absent."""
        for elem in (self.elements.get(0x00080016), self.meta.get(0x00020002)):
            if elem is not None and elem.value:
                value = elem.value.decode("latin-1").strip(" \x00")
                if value:
                    return value
        return ""


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR or None, value length, value offset)`` of the element header at ``pos``."""
    if implicit:
        if pos + 8 > len(buf):
            raise _NeedMore
        group, elem, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
        return group << 16 | elem, None, length, pos + 8
    if pos + 8 > len(buf):
        raise _NeedMore
    group, elem, vr, short = _EXPLICIT_HEAD.unpack_from(buf, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item and delimiters have no VR
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _NeedMore
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unsupported  # not an explicit VR: let pydicom judge the file
    return tag, vr, short, pos + 8


_MAX_DEPTH = 16  # deeper nesting is left to pydicom (which reports it; slices never need it)


def _skip_undefined(buf: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Offset just past an undefined-length sequence (items and nested sequences) starting at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Unsupported
    while True:
        tag, _, length, value = _element(buf, pos, implicit)
        if tag == _SEQUENCE_END:
            return value
        if tag != _ITEM:
            raise _Unsupported
        if length != _UNDEFINED:
            pos = value + length
            continue
        pos = value
        while True:  # elements of an undefined-length item, up to its delimiter
            tag, _, length, value = _element(buf, pos, implicit)
            if tag == _ITEM_END:
                pos = value
                break
            pos = _skip_undefined(buf, value, implicit, depth + 1) if length == _UNDEFINED else value + length
        if pos > len(buf):
            raise _NeedMore


def _parse(buf: bytes, file_size: int) -> RawHeader:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise _Unsupported
    meta: dict[int, RawDataElement] = {}
    pos = 132
    while True:
        if pos + 8 > len(buf):
            raise _NeedMore
        if _TAG.unpack_from(buf, pos)[0] != 0x0002:
            break
        tag, vr, length, value = _element(buf, pos, False)
        if length == _UNDEFINED or value + length > len(buf):
            raise _NeedMore if length != _UNDEFINED else _Unsupported
        meta[tag] = RawDataElement(tag, vr.decode(), length, buf[value : value + length], value, False, True)
        pos = value + length
    syntax_elem = meta.get(0x00020010)
    syntax = syntax_elem.value.decode("latin-1").strip(" \x00") if syntax_elem is not None else ""
    if syntax not in _FAST_SYNTAXES:
        raise _Unsupported
    implicit = syntax == uids.ImplicitVRLittleEndian
    elements: dict[int, RawDataElement] = {}
    pixel_offset, pixel_length = None, 0
    n = len(buf)
    head = _IMPLICIT_HEAD.unpack_from if implicit else _EXPLICIT_HEAD.unpack_from
    while pos < file_size:  # the element loop, inlined: it runs ~50 times per file
        if pos + 12 > n and n < file_size:
            raise _NeedMore  # (at the end of the file, struct.error on a short header means truncated)
        if implicit:
            group, elem, length = head(buf, pos)
            vr, value = None, pos + 8
        else:
            group, elem, vr_bytes, length = head(buf, pos)
            if vr_bytes in _LONG_VRS:
                length = _U32.unpack_from(buf, pos + 8)[0]
                value = pos + 12
            elif group == 0xFFFE or not (65 <= vr_bytes[0] <= 90 and 65 <= vr_bytes[1] <= 90):
                raise _Unsupported  # an item outside a sequence or no explicit VR: let pydicom judge
            else:
                value = pos + 8
            vr = _VR_NAMES.get(vr_bytes) or vr_bytes.decode()
        tag = group << 16 | elem
        if tag >= _FIRST_PIXEL_TAG:
            if tag != _PIXEL_DATA or length == _UNDEFINED:
                raise _Unsupported  # float pixel data, or encapsulated pixels under a native syntax
            pixel_offset, pixel_length = value, length
            break
        if tag in _FUNCTIONAL_GROUPS:
            raise _Unsupported
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, value, implicit)  # sequences: not needed for plain slices
            continue
        end = value + length
        if vr != "SQ":
            if end > n:
                raise _NeedMore
            elements[tag] = RawDataElement(tag, vr, length, buf[value:end], value, implicit, True)
        elif end > file_size:
            raise _Unsupported
        pos = end
    return RawHeader(elements, meta, syntax, pixel_offset, pixel_length, file_size)


def read_raw_header(source: str | os.PathLike[str] | BinaryIO) -> RawHeader | None:
    """Header elements and Pixel Data location of an uncompressed little-endian file; None: use pydicom.

    ``source`` is a path (opened with `medsuite.io.files.open_regular`: regular files only) or an open
    unbuffered binary file, which is left open. Raises `OSError` when the file cannot be read.
    """
    if not hasattr(source, "read"):
        from medsuite.io.files import open_regular

        with open_regular(source) as fp:
            return read_raw_header(fp)
    fp = source
    file_size = os.fstat(fp.fileno()).st_size
    size = _FIRST_READ
    while True:
        fp.seek(0)
        buf = fp.read(min(size, file_size))
        try:
            return _parse(buf, file_size)
        except _NeedMore:
            if len(buf) >= file_size or size >= _MAX_HEADER:
                return None  # truncated inside the header: pydicom gives the error
            size *= 4
            continue
        except (_Unsupported, struct.error, UnicodeDecodeError, RecursionError):
            return None
