"""Calibration data sources, batching, and the errors users see for bad data."""

import numpy as np
import pytest
from PIL import Image

from trtptq.core.errors import DataError
from trtptq.data import Batches, ImageOptions, InputSpec, Shard, open_source

IMG = [InputSpec("input", np.dtype(np.float32), ("batch", 1, 28, 28))]
TEXT = [InputSpec("input_ids", np.dtype(np.int64), ("batch", "seq")),
        InputSpec("attention_mask", np.dtype(np.int64), ("batch", "seq"))]


def batches(data, specs=IMG, **kw):
    return list(Batches(open_source(data, specs), specs, **kw))


def test_npz_samples_are_cut_into_batches(tmp_path, mnist):
    _, images, labels = mnist
    np.savez(tmp_path / "c.npz", input=images[:10], labels=labels[:10])
    got = batches(tmp_path / "c.npz", batch_size=4)
    assert [b.size for b in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b.feed["input"] for b in got]), images[:10])
    assert np.array_equal(np.concatenate([b.labels for b in got]), labels[:10])
    assert [b.size for b in batches(tmp_path / "c.npz", batch_size=4, num_samples=5)] == [4, 1]


def test_folder_of_single_samples_and_batches(tmp_path, mnist):
    _, images, _ = mnist
    np.save(tmp_path / "a.npy", images[0])  # one sample, no batch axis
    np.savez(tmp_path / "b.npz", input=images[1:4])  # a batch of 3
    got = batches(tmp_path, batch_size=2)
    assert [b.size for b in got] == [2, 2]
    assert np.array_equal(np.concatenate([b.feed["input"] for b in got]), images[:4])


def test_image_folder_matches_manual_preprocessing(tmp_path, mnist):
    _, images, _ = mnist
    raw = np.clip(np.rint((images[:3, 0] * 0.3081 + 0.1307) * 255), 0, 255).astype(np.uint8)
    for k, img in enumerate(raw):
        Image.fromarray(img).save(tmp_path / f"{k}.png")
    opts = ImageOptions(mean=(0.1307,), std=(0.3081,))
    src = open_source(tmp_path, IMG, opts)
    got = np.concatenate([b.feed["input"] for b in Batches(src, IMG, batch_size=3)])
    assert got.shape == (3, 1, 28, 28) and got.dtype == np.float32
    assert np.allclose(got, (raw[:, None] / 255.0 - 0.1307) / 0.3081, atol=1e-5)


def test_image_folder_rgb_nhwc_bgr_and_center_crop(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 10  # red-ish
    Image.fromarray(rgb).save(tmp_path / "x.png")
    spec = [InputSpec("img", np.dtype(np.float32), (1, 32, 32, 3))]
    src = open_source(tmp_path, spec, ImageOptions(resize=32, channel_order="BGR", scale=1.0))
    (b,) = Batches(src, spec)
    assert b.feed["img"].shape == (1, 32, 32, 3)
    assert np.allclose(b.feed["img"][0, 5, 5], [10, 0, 200], atol=1)


def test_polygraphy_style_script(tmp_path):
    script = tmp_path / "data_loader.py"
    script.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    for i in range(3):\n"
        "        yield {'input_ids': np.full((2, 5), i), 'attention_mask': np.ones((2, 5), np.int64)}\n"
        "def other():\n"
        "    yield {'input_ids': np.zeros((1, 5), np.int32), 'attention_mask': np.ones((1, 5), np.int32)}\n")
    got = batches(script, TEXT, batch_size=4)
    assert [b.size for b in got] == [4, 2] and got[0].feed["input_ids"].dtype == np.int64
    (b,) = batches(f"{script}:other", TEXT)
    assert b.feed["input_ids"].dtype == np.int64  # int32 widened to the model's int64


def test_dynamic_dims_cannot_share_a_batch(tmp_path):
    data = [{"input_ids": np.ones((1, n), np.int64), "attention_mask": np.ones((1, n), np.int64)} for n in (4, 6)]
    assert [b.feed["input_ids"].shape for b in batches(data, TEXT)] == [(1, 4), (1, 6)]
    with pytest.raises(DataError, match="differ in shape.*--batch-size 1"):
        batches(data, TEXT, batch_size=2)


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((2, 1, 28, 28), np.float32)}, r"missing input\(s\) input; unknown key\(s\) image.*"
                                                      r"input \(float32, batchx1x28x28\)"),
    ({"input": np.zeros((2, 3, 28, 28), np.float32)}, r"dimension 1 must be 1"),
    ({"input": np.zeros((2, 28, 28, 1, 1), np.float32)}, r"has shape \(2, 28, 28, 1, 1\), but the model expects"),
    ({"input": np.zeros((2, 1, 28, 28), np.int64)}, r"is int64 but the model takes float32.*astype"),
    ({"input": np.zeros((2, 1, 28, 28), np.float32), "labels": np.zeros(3)}, r"3 labels for 2 samples"),
])
def test_bad_data_names_file_input_and_fix(tmp_path, arrays, message):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        batches(path)
    assert str(path) in str(e.value)


def test_empty_unreadable_and_missing_sources(tmp_path):
    np.savez(tmp_path / "empty.npz", input=np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(DataError, match="holds no samples"):
        batches(tmp_path / "empty.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"cannot read .*broken.npz"):
        batches(tmp_path / "broken.npz")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no .npz/.npy files and no images"):
        batches(tmp_path / "sub")
    with pytest.raises(DataError, match="does not exist"):
        batches(tmp_path / "nothing.npz")


def test_fixed_batch_dimension(tmp_path):
    spec = [InputSpec("input", np.dtype(np.float32), (1, 1, 28, 28))]
    data = [{"input": np.zeros((3, 1, 28, 28), np.float32)}]
    assert [b.size for b in batches(data, spec)] == [1, 1, 1]
    with pytest.raises(DataError, match="fixed at 1.*--batch-size 1"):
        batches(data, spec, batch_size=8)


def _samples(data, specs=IMG, shard=None, **kw):
    got = list(Batches(open_source(data, specs), specs, batch_size=3, shard=shard, **kw))
    return np.concatenate([b.feed["input"] for b in got]) if got else np.zeros((0, *specs[0].shape[1:]))


@pytest.mark.parametrize("kind", ["npz", "compressed", "folder", "images", "script", "sharding script"])
def test_shard_k_of_n_holds_samples_k_k_plus_n_for_every_source(tmp_path, mnist, kind):
    _, images, _ = mnist
    images = images[:11]
    if kind == "npz":
        np.savez(tmp_path / "d.npz", input=images)
    elif kind == "compressed":
        np.savez_compressed(tmp_path / "d.npz", input=images)
    elif kind == "folder":  # files of 1, 3 and 7 samples, one without its batch axis
        np.save(tmp_path / "a.npy", images[0])
        np.savez(tmp_path / "b.npz", input=images[1:4])
        np.savez(tmp_path / "c.npz", input=images[4:])
    elif kind == "images":
        images = np.clip(np.rint(images * 64 + 128), 0, 255).astype(np.uint8)
        for k, img in enumerate(images):
            Image.fromarray(img[0]).save(tmp_path / f"{k:02d}.png")
        images = _samples(tmp_path)  # decoded as a whole
    else:
        np.save(tmp_path / "all.npy", images)
        signature = "shard=0, num_shards=1" if kind == "sharding script" else ""
        body = "x[shard::num_shards]" if kind == "sharding script" else "x"
        (tmp_path / "loader.py").write_text(
            "import numpy as np\n\n\n"
            f"def load_data({signature}):\n"
            f"    x = np.load({str(tmp_path / 'all.npy')!r})\n"
            f"    for s in {body}:\n"
            "        yield {'input': s}\n")
    data = {"npz": tmp_path / "d.npz", "compressed": tmp_path / "d.npz", "script": tmp_path / "loader.py",
            "sharding script": tmp_path / "loader.py"}.get(kind, tmp_path)
    for n in (1, 2, 4):
        for k in range(n):
            assert np.array_equal(_samples(data, shard=Shard(k, n)), images[k::n]), (k, n)
            # --num-samples caps the whole data: shard k takes its part of the first 7 samples
            assert np.array_equal(_samples(data, shard=Shard(k, n), num_samples=7), images[:7][k::n]), (k, n)


def test_npz_is_read_a_chunk_at_a_time(tmp_path, mnist, monkeypatch):
    """Stored members are memory-mapped per chunk, compressed ones streamed: same samples, never the whole file."""
    from trtptq.data import arrays

    _, images, labels = mnist
    monkeypatch.setattr(arrays, "CHUNK_BYTES", images[0].nbytes * 5)  # 4 samples (+ labels) per chunk
    for save, kind in ((np.savez, np.memmap), (np.savez_compressed, np.ndarray)):
        save(tmp_path / "d.npz", input=images[:10], labels=labels[:10])
        chunks = list(open_source(tmp_path / "d.npz", IMG)())
        assert [len(c.arrays["input"]) for c in chunks] == [4, 4, 2]
        assert all(type(c.arrays["input"]) is kind for c in chunks)
        assert np.array_equal(np.concatenate([c.arrays["labels"] for c in chunks]), labels[:10])
        got = batches(tmp_path / "d.npz", batch_size=3)
        assert np.array_equal(np.concatenate([b.feed["input"] for b in got]), images[:10])


def test_pickled_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "p.npz", input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"p.npz holds Python objects \(a pickled array\)"):
        batches(tmp_path / "p.npz")


def test_a_shard_without_samples_says_so(tmp_path, mnist):
    np.savez(tmp_path / "d.npz", input=mnist[1][:2])
    with pytest.raises(DataError, match=r"shard 3/4 of the calibration data holds no samples"):
        _samples(tmp_path / "d.npz", shard=Shard(3, 4))
