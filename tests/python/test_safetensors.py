# test_safetensors.py - the strict safetensors reader on good files (crafted,
# flowkit checkpoints and exports) and on crafted bad ones, each refused.
"""Run: python3 -m unittest test_safetensors (numpy needed).

With FLOWKIT set (the build's flowkit, as tests/export_ref.sh does) the
reader also reads a real checkpoint and its export."""

import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_reader as st  # noqa: E402


def raw_file(header, data=b"", pad=True):
    """Bytes of a file with the given header (a dict or raw bytes)."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + data


def entry(dtype, shape, b, e):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


class GoodFiles(unittest.TestCase):
    def test_round_trip_every_numpy_dtype(self):
        arrs = {
            "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
            "f64": np.array([np.pi, -0.0, 1e-300]),
            "i64": np.array([-(2 ** 62), 3], dtype=np.int64),
            "u8": np.array([[0, 255]], dtype=np.uint8),
            "scalar": np.array(2.5, dtype=np.float32),
            "empty": np.zeros((0, 4), dtype=np.float32),
        }
        t, meta = st.loads(st.dumps(arrs, {"k": "v"}))
        self.assertEqual(meta, {"k": "v"})
        self.assertEqual(list(t), list(arrs))
        for k, a in arrs.items():
            self.assertEqual(t[k].dtype, a.dtype, k)
            self.assertEqual(t[k].shape, a.shape, k)
            np.testing.assert_array_equal(t[k], a)

    def test_header_layout_of_written_file(self):
        raw = st.dumps({"a": np.ones(3, dtype=np.float32)})
        (n,) = struct.unpack("<Q", raw[:8])
        self.assertEqual(n % 8, 0)
        self.assertEqual(raw[8:9], b"{")
        self.assertEqual(len(raw), 8 + n + 12)

    def test_no_metadata_reads_as_empty(self):
        raw = raw_file({"a": entry("F32", [1], 0, 4)}, b"\0\0\x80\x3f")
        t, meta = st.loads(raw)
        self.assertEqual(meta, {})
        self.assertEqual(float(t["a"][0]), 1.0)

    def test_tensors_listed_out_of_offset_order(self):
        raw = raw_file({"b": entry("U8", [2], 2, 4), "a": entry("U8", [2],
                                                                  0, 2)},
                       bytes([1, 2, 3, 4]))
        t, _ = st.loads(raw)
        self.assertEqual(t["a"].tolist(), [1, 2])
        self.assertEqual(t["b"].tolist(), [3, 4])

    def test_bf16_comes_back_as_raw_bits(self):
        raw = raw_file({"h": entry("BF16", [1], 0, 2)}, b"\x80\x3f")
        t, _ = st.loads(raw)
        self.assertEqual(t["h"].dtype, np.uint16)
        self.assertEqual(int(t["h"][0]), 0x3F80)


class BadFiles(unittest.TestCase):
    def refused(self, raw, phrase):
        with self.assertRaises(st.SafetensorsError) as cm:
            st.loads(raw, "bad.st")
        msg = str(cm.exception)
        self.assertTrue(msg.startswith("bad.st: "), msg)
        self.assertIn(phrase, msg)

    def test_shorter_than_the_size_field(self):
        self.refused(b"\x10\0\0\0\0", "truncated: 5 bytes")

    def test_empty_file(self):
        self.refused(b"", "truncated: 0 bytes")

    def test_header_past_end_of_file(self):
        good = st.dumps({"a": np.ones(2, dtype=np.float32)})
        self.refused(struct.pack("<Q", 4096) + good[8:],
                     "header size 4096 runs past the end of the file")

    def test_header_size_over_limit(self):
        self.refused(struct.pack("<Q", 2 ** 40) + b"{}",
                     "exceeds the limit of 100000000 bytes")

    def test_truncated_data(self):
        good = st.dumps({"a": np.ones(4, dtype=np.float32)})
        self.refused(good[:-3], "beyond the data section (13 bytes)")

    def test_trailing_bytes_no_tensor_owns(self):
        good = st.dumps({"a": np.ones(1, dtype=np.float32)})
        self.refused(good + b"\0" * 4,
                     "4 bytes of the data section belong to no tensor")

    def test_overlapping_offsets(self):
        raw = raw_file({"a": entry("F32", [2], 0, 8),
                        "b": entry("F32", [2], 4, 12)}, b"\0" * 12)
        self.refused(raw, "tensor 'b': data_offsets [4, 12] overlap")

    def test_gap_between_tensors(self):
        raw = raw_file({"a": entry("F32", [1], 0, 4),
                        "b": entry("F32", [1], 8, 12)}, b"\0" * 12)
        self.refused(raw, "leave a gap of 4 bytes")

    def test_first_tensor_not_at_zero(self):
        raw = raw_file({"a": entry("F32", [1], 4, 8)}, b"\0" * 8)
        self.refused(raw, "leave a gap of 4 bytes")

    def test_unknown_dtype(self):
        raw = raw_file({"a": entry("F24", [1], 0, 3)}, b"\0" * 3)
        self.refused(raw, "unknown dtype 'F24'")

    def test_span_does_not_match_shape(self):
        raw = raw_file({"a": entry("F32", [3], 0, 16)}, b"\0" * 16)
        self.refused(raw, "span 16 bytes but F32 of shape [3] needs 12")

    def test_offsets_reversed(self):
        raw = raw_file({"a": entry("U8", [0], 4, 0)}, b"\0" * 4)
        self.refused(raw, "end before they begin")

    def test_negative_offset(self):
        raw = raw_file({"a": entry("U8", [1], -1, 0)}, b"")
        self.refused(raw, "is not two non-negative integers")

    def test_negative_or_boolean_dimension(self):
        self.refused(raw_file({"a": entry("U8", [-1], 0, 0)}),
                     "not a list of non-negative integers")
        self.refused(raw_file({"a": entry("U8", [True], 0, 1)}, b"\0"),
                     "not a list of non-negative integers")

    def test_extra_or_missing_keys(self):
        e = entry("U8", [1], 0, 1)
        e["offset"] = 0
        self.refused(raw_file({"a": e}, b"\0"), "expected exactly the keys")
        self.refused(raw_file({"a": {"dtype": "U8", "shape": [1]}}, b"\0"),
                     "expected exactly the keys")

    def test_metadata_must_be_strings(self):
        raw = raw_file({"__metadata__": {"n": 3}})
        self.refused(raw, "__metadata__ is not a map of string to string")

    def test_header_not_json(self):
        self.refused(raw_file(b'{"a": '), "header is not valid JSON")

    def test_header_not_an_object_start(self):
        self.refused(raw_file(b'  {}'), "does not begin with '{'")
        self.refused(raw_file(b'[1]'), "does not begin with '{'")

    def test_duplicate_key(self):
        hb = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},' \
             b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
        self.refused(raw_file(hb, b"\0"), "duplicate key 'a'")

    def test_nan_constant(self):
        hb = b'{"__metadata__":{"a":"b"},"x":NaN}'
        self.refused(raw_file(hb), "non-standard JSON constant NaN")

    def test_not_utf8(self):
        self.refused(raw_file(b'{"\xff":1}'), "header is not UTF-8")

    def test_padding_other_than_spaces(self):
        self.refused(raw_file(b'{}\n', pad=False), "padded with something")


@unittest.skipUnless(os.environ.get("FLOWKIT"), "FLOWKIT not set")
class FlowkitFiles(unittest.TestCase):
    """A real checkpoint and its export read with every check on."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d, fk = cls.tmp.name, os.environ["FLOWKIT"]
        spec = os.path.join(os.environ.get("top_srcdir", "."), "specs",
                            "maf_moons.flow")
        cls.data = os.path.join(d, "m.csv")
        cls.ckpt = os.path.join(d, "m.ckpt")
        cls.export = os.path.join(d, "m.safetensors")
        for cmd in ([fk, "data", "moons", "-n", "256", "--seed", "3", "-o",
                     cls.data],
                    [fk, "train", spec, "--data", cls.data, "--epochs", "1",
                     "--quiet", "-o", cls.ckpt],
                    [fk, "export", cls.ckpt, "-o", cls.export]):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_checkpoint_reads(self):
        t, meta = st.load(self.ckpt)
        self.assertEqual(meta["format"], "flowkit.checkpoint")
        self.assertIn("params/maf#0", t)
        self.assertEqual(t["rng/model"].dtype, np.uint64)
        self.assertEqual(t["rng/model"].shape, (6,))

    def test_export_reads_and_follows_the_contract(self):
        t, meta = st.load(self.export)
        self.assertEqual(meta["format"], "flowkit.export")
        self.assertEqual(meta["format_version"], "1")
        self.assertIn(meta["dtype"], ("F32", "F64"))
        arch = json.loads(meta["architecture"])
        self.assertEqual(arch["dim"], 2)
        self.assertEqual(len(arch["layers"]), 10)
        real = np.float32 if meta["dtype"] == "F32" else np.float64
        for name, a in t.items():
            self.assertTrue(name.startswith(("layers.", "base.")), name)
            if name.endswith((".weight", ".bias")):
                self.assertEqual(a.dtype, real, name)
            if name.endswith(".weight") and name.replace(
                    ".weight", ".mask") in t:
                m = t[name.replace(".weight", ".mask")]
                self.assertEqual(m.shape, a.shape, name)
                self.assertEqual(int(np.count_nonzero(a[m == 0])), 0,
                                 "%s has masked entries not zero" % name)
        self.assertEqual(t["layers.0.net.0.weight"].shape, (64, 2))
        self.assertEqual(t["layers.0.net.2.weight"].shape, (4, 64))
        self.assertEqual(t["layers.1.perm"].tolist(), [1, 0])

    def test_every_byte_of_the_export_is_owned(self):
        header, _ = st.header_of(self.export)
        size = os.path.getsize(self.export)
        with open(self.export, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        spans = sorted(tuple(e["data_offsets"]) for e in header.values())
        self.assertEqual(spans[0][0], 0)
        self.assertEqual(spans[-1][1], size - 8 - n)


if __name__ == "__main__":
    unittest.main()
