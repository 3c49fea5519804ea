# safetensors_reader.py - a strict reader of the safetensors format, written
# from its published description, returning numpy arrays and the metadata.
"""Strict safetensors reader (numpy only).

Written from the format as published by Hugging Face
(https://github.com/huggingface/safetensors, README "Format" and
docs/source/index.mdx; the Rust reference `safetensors/src/tensor.rs`):

    bytes 0..7       N, unsigned 64-bit little-endian: the header's size
    bytes 8..8+N-1   the header: a UTF-8 JSON object, which must begin
                     with '{' and may be padded at the end with spaces
    bytes 8+N..      the data section (the "byte buffer")

The header maps each tensor name to {"dtype", "shape", "data_offsets"}
and may hold one "__metadata__" entry, a map of string to string.
data_offsets = [BEGIN, END] are relative to the start of the data section;
END - BEGIN is the element count times the dtype's size; the tensors are
contiguous row-major little-endian arrays that cover the data section
exactly, without overlap or hole (the reference reader refuses a file
whose offsets do not tile the buffer).  The header is at most 100 MB
(the reference's MAX_HEADER_SIZE).

Every violation raises SafetensorsError with the file name and what is
wrong, never a bare KeyError or struct.error.
"""

import json
import struct

import numpy as np

MAX_HEADER_SIZE = 100_000_000

# dtype name -> (element size in bytes, numpy dtype or None when numpy has
# no such type: BF16 and the 8-bit floats come back as their raw bits)
DTYPES = {
    "BOOL": (1, "?"),
    "U8": (1, "<u1"),
    "I8": (1, "<i1"),
    "F8_E5M2": (1, None),
    "F8_E4M3": (1, None),
    "I16": (2, "<i2"),
    "U16": (2, "<u2"),
    "F16": (2, "<f2"),
    "BF16": (2, None),
    "I32": (4, "<i4"),
    "U32": (4, "<u4"),
    "F32": (4, "<f4"),
    "F64": (8, "<f8"),
    "I64": (8, "<i8"),
    "U64": (8, "<u8"),
}
RAW_BITS = {1: "<u1", 2: "<u2"}


class SafetensorsError(ValueError):
    """A file that is not valid safetensors (the message names it)."""


def _fail(name, msg):
    raise SafetensorsError("%s: %s" % (name, msg))


def _no_duplicates(pairs):
    """json object hook: JSON allows duplicate keys, a header must not."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key %r" % k)
        out[k] = v
    return out


def _no_constants(tok):
    raise ValueError("non-standard JSON constant %s" % tok)


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_header(raw, name="<bytes>"):
    """Validates the header of a whole file's bytes `raw`.

    Returns (tensors, metadata, data_start) with tensors a dict name ->
    {"dtype", "shape", "data_offsets"}, in file order.
    """
    if len(raw) < 8:
        _fail(name, "truncated: %d bytes, the header size alone takes 8"
              % len(raw))
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER_SIZE:
        _fail(name, "header size %d exceeds the limit of %d bytes"
              % (n, MAX_HEADER_SIZE))
    if 8 + n > len(raw):
        _fail(name, "header size %d runs past the end of the file (%d bytes "
              "follow the size)" % (n, len(raw) - 8))
    hb = raw[8:8 + n]
    if not hb.startswith(b"{"):
        _fail(name, "header does not begin with '{'")
    try:
        text = hb.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(name, "header is not UTF-8 (%s)" % e)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constants)
    except ValueError as e:
        _fail(name, "header is not valid JSON: %s" % e)
    if text.rstrip(" ") != text.rstrip():
        _fail(name, "header is padded with something other than spaces")
    if not isinstance(header, dict):
        _fail(name, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in meta.items()):
        _fail(name, "__metadata__ is not a map of string to string")
    data_len = len(raw) - 8 - n
    spans = []
    for tname, t in header.items():
        where = "tensor %r" % tname
        if not isinstance(t, dict) or set(t) != {"dtype", "shape",
                                                 "data_offsets"}:
            _fail(name, "%s: expected exactly the keys dtype, shape and "
                  "data_offsets, got %s" % (where, sorted(t)
                                             if isinstance(t, dict) else t))
        dt = t["dtype"]
        if dt not in DTYPES:
            _fail(name, "%s: unknown dtype %r" % (where, dt))
        shape = t["shape"]
        if not isinstance(shape, list) or not all(_is_uint(s) for s in shape):
            _fail(name, "%s: shape %r is not a list of non-negative integers"
                  % (where, shape))
        off = t["data_offsets"]
        if (not isinstance(off, list) or len(off) != 2
                or not all(_is_uint(o) for o in off)):
            _fail(name, "%s: data_offsets %r is not two non-negative "
                  "integers" % (where, off))
        b, e = off
        if b > e:
            _fail(name, "%s: data_offsets [%d, %d] end before they begin"
                  % (where, b, e))
        if e > data_len:
            _fail(name, "%s: data_offsets [%d, %d] beyond the data section "
                  "(%d bytes)" % (where, b, e, data_len))
        count = 1
        for s in shape:
            count *= s
        need = count * DTYPES[dt][0]
        if e - b != need:
            _fail(name, "%s: data_offsets span %d bytes but %s of shape %s "
                  "needs %d" % (where, e - b, dt, shape, need))
        spans.append((b, e, tname))
    # contiguity: sorted by offset, each tensor begins where the previous
    # ended, from 0 to the end of the file (zero-size tensors sort first)
    spans.sort()
    pos = 0
    for b, e, tname in spans:
        if b < pos:
            _fail(name, "tensor %r: data_offsets [%d, %d] overlap another "
                  "tensor (expected to start at %d)" % (tname, b, e, pos))
        if b > pos:
            _fail(name, "tensor %r: data_offsets [%d, %d] leave a gap of %d "
                  "bytes before it" % (tname, b, e, b - pos))
        pos = e
    if pos != data_len:
        _fail(name, "%d bytes of the data section belong to no tensor"
              % (data_len - pos))
    return header, meta, 8 + n


def to_array(raw, data_start, t):
    """The numpy array of one validated tensor entry (a copy)."""
    size, npdt = DTYPES[t["dtype"]]
    b, e = t["data_offsets"]
    buf = raw[data_start + b:data_start + e]
    arr = np.frombuffer(buf, dtype=npdt or RAW_BITS[size])
    return arr.reshape(t["shape"]).copy()


def load(path):
    """(tensors, metadata) of the file at path: name -> numpy array and
    the __metadata__ map ({} when absent).  Raises SafetensorsError."""
    with open(path, "rb") as f:
        raw = f.read()
    return loads(raw, str(path))


def loads(raw, name="<bytes>"):
    """load() for bytes already in memory."""
    header, meta, start = parse_header(raw, name)
    return {k: to_array(raw, start, t) for k, t in header.items()}, meta


def header_of(path):
    """(tensor entries, metadata) without reading the arrays."""
    with open(path, "rb") as f:
        raw = f.read()
    header, meta, _ = parse_header(raw, str(path))
    return header, meta


def dumps(tensors, metadata=None):
    """Bytes of a safetensors file (for crafting test files): tensors a
    dict name -> numpy array, written in the dict's order."""
    rev = {v[1]: k for k, v in DTYPES.items() if v[1]}
    header, blobs, pos = {}, [], 0
    for k, a in tensors.items():
        a = np.array(a, order="C")
        code = a.dtype.newbyteorder("<").str if a.dtype.kind != "b" else "?"
        if code == "|u1":
            code = "<u1"
        if code == "|i1":
            code = "<i1"
        blob = a.astype(code).tobytes()
        header[k] = {"dtype": rev[code], "shape": list(a.shape),
                     "data_offsets": [pos, pos + len(blob)]}
        blobs.append(blob)
        pos += len(blob)
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + b"".join(blobs)
