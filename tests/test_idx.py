import gzip

import numpy as np
import pytest

from defpert.data.idx import encode_idx, parse_idx, read_idx, read_images_and_labels
from defpert.errors import DefpertError


def _images(n: int = 5) -> np.ndarray:
    return np.arange(n * 4 * 3, dtype=np.uint8).reshape(n, 4, 3)


def test_round_trip_plain_and_gzip(tmp_path):
    arr = _images()
    (tmp_path / "a").write_bytes(encode_idx(arr))
    (tmp_path / "b.gz").write_bytes(gzip.compress(encode_idx(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), arr)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x01\x02" + b[2:], "bad magic number"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "type code 0x0d"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: b + b"\x00", "longer than its header says"),
        (lambda b: b[:6], "truncated inside its header"),
        (lambda b: b"", "only 0 bytes"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path, mutate, message):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(mutate(encode_idx(_images())))
    with pytest.raises(DefpertError, match=message) as info:
        read_idx(bad)
    assert "\n" not in str(info.value)


def test_corrupt_gzip(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(encode_idx(_images()))[:-10])
    with pytest.raises(DefpertError, match="corrupt or truncated gzip"):
        read_idx(bad)


def test_missing_file(tmp_path):
    with pytest.raises(DefpertError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_count_mismatch(tmp_path):
    (tmp_path / "img").write_bytes(encode_idx(_images(5)))
    (tmp_path / "lab").write_bytes(encode_idx(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DefpertError, match="5 images.*4 labels"):
        read_images_and_labels(tmp_path / "img", tmp_path / "lab")


def test_wrong_rank(tmp_path):
    (tmp_path / "img").write_bytes(encode_idx(np.zeros((5, 4), dtype=np.uint8)))
    (tmp_path / "lab").write_bytes(encode_idx(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DefpertError, match=r"shape \(N, H, W\)"):
        read_images_and_labels(tmp_path / "img", tmp_path / "lab")


def test_parse_idx_shape():
    assert parse_idx(encode_idx(np.zeros((2, 3, 4), dtype=np.uint8))).shape == (2, 3, 4)
