"""Image columns: fixed-shape tensors in memory <-> fixed-size binary in Parquet (raw float32 bytes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bidpm.data.tensor_columns import decode_images, encode_images


def _table(x: np.ndarray) -> pa.Table:
    return pa.table({"slice": pa.array(np.arange(len(x), dtype=np.int32)), "img": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})


def test_disk_form_is_the_raw_little_endian_bytes_of_each_slice(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    pq.write_table(encode_images(_table(x)), tmp_path / "t.parquet")
    raw = pq.read_table(tmp_path / "t.parquet")
    assert raw.schema.field("img").type == pa.binary(4 * 3 * 4)
    assert raw.column("img").to_pylist() == [x[i].astype("<f4").tobytes() for i in range(5)]  # row-major, per slice
    back = decode_images(raw)
    assert back.schema.field("img").type == pa.fixed_shape_tensor(pa.float32(), [4, 3])
    np.testing.assert_array_equal(back.column("img").combine_chunks().to_numpy_ndarray(), x)
    assert back.column("slice").to_pylist() == list(range(5))


def test_sliced_and_chunked_columns_keep_their_rows():
    x = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
    t = pa.concat_tables([_table(x[:2]), _table(x[2:])])  # two chunks
    for part, ref in ((t, x), (t.slice(1, 4), x[1:5]), (encode_images(t).slice(3, 2), x[3:5])):
        enc = part if pa.types.is_fixed_size_binary(part.schema.field("img").type) else encode_images(part)
        np.testing.assert_array_equal(decode_images(enc).column("img").combine_chunks().to_numpy_ndarray(), ref)


def test_tables_without_image_columns_pass_through():
    t = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert decode_images(encode_images(t)).equals(t)
