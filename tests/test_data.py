"""Tests for textgen.data: splitting the encoded corpus and stream batching for truncated BPTT."""

import numpy as np
import pytest

from textgen.data import StreamBatcher, log_frequencies, split_train_val
from textgen.errors import TextgenError


def test_split_by_position():
    ids = np.arange(1000, dtype=np.uint16)
    train, val = split_train_val(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(val, ids[900:]) and np.array_equal(train, ids[:900])
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.9, float("nan")])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(TextgenError):
        split_train_val(np.arange(10), fraction)


def reference_windows(ids, batch_size, seq_len):
    """Independent reference: walk each row's stream with explicit offsets."""
    stream_len = len(ids) // batch_size
    windows = []
    k = 0
    while (k + 1) * seq_len + 1 <= stream_len:
        xs, ys = [], []
        for b in range(batch_size):
            base = b * stream_len + k * seq_len
            xs.append([int(ids[base + t]) for t in range(seq_len)])
            ys.append([int(ids[base + t + 1]) for t in range(seq_len)])
        windows.append((np.array(xs), np.array(ys)))
        k += 1
    return windows


@pytest.mark.parametrize("n, batch_size, seq_len", [(103, 4, 5), (41, 2, 4), (60, 3, 19), (12, 3, 3)])
def test_stream_batcher_matches_reference(n, batch_size, seq_len):
    ids = np.arange(n, dtype=np.uint16)
    batcher = StreamBatcher(ids, batch_size, seq_len)
    stream_len = n // batch_size
    reference = reference_windows(ids, batch_size, seq_len)
    assert batcher.num_windows == len(batcher) == (stream_len - 1) // seq_len == len(reference)
    for k in range(batcher.num_windows):
        x, y = batcher.window(k)
        assert x.shape == y.shape == (batch_size, seq_len)
        assert x.dtype == y.dtype == np.int32
        assert np.array_equal(x, reference[k][0]) and np.array_equal(y, reference[k][1])
        assert np.array_equal(y[:, :-1], x[:, 1:])  # (1) targets are inputs shifted by one
        assert np.all(y[:, -1] == x[:, -1] + 1)  # arange: shift continues in the stream
        for b in range(batch_size):  # (3) rows are contiguous slices starting at b*stream_len
            start = b * stream_len + k * seq_len
            assert np.array_equal(x[b], ids[start : start + seq_len])
        if k + 1 < batcher.num_windows:  # (2) continuity across windows
            next_x, _ = batcher.window(k + 1)
            assert np.all(next_x[:, 0] == x[:, -1] + 1)
            assert np.array_equal(next_x[:, 0], y[:, -1])
    with pytest.raises(IndexError):
        batcher.window(batcher.num_windows)


def test_stream_batcher_dataset_resumes_mid_epoch():
    ids = np.arange(203, dtype=np.uint16)
    batcher = StreamBatcher(ids, 4, 6)
    assert batcher.num_windows == 8
    elements = list(batcher.dataset(start_window=2))
    assert len(elements) == batcher.num_windows - 2
    for k, (x, y) in enumerate(elements, start=2):
        assert x.dtype.name == y.dtype.name == "int32"
        assert tuple(x.shape) == tuple(y.shape) == (4, 6)
        ref_x, ref_y = batcher.window(k)
        assert np.array_equal(x.numpy(), ref_x) and np.array_equal(y.numpy(), ref_y)
    spec = batcher.dataset().element_spec
    assert tuple(spec[0].shape) == (4, 6) and spec[0].dtype.name == "int32"
    assert len(list(batcher.dataset())) == 8
    assert len(list(batcher.dataset(start_window=8))) == 0


def test_stream_batcher_dataset_leaves_tf_data_autotuning_off():
    # dropping an autotuned iterator mid-epoch (a run's end, Ctrl-C) waited up to ~12 s for
    # tf.data's autotuning thread to wake up (bench/RESULTS.md): the pipeline must not start one
    dataset = StreamBatcher(np.arange(203, dtype=np.uint16), 4, 6).dataset()
    assert dataset.options().autotune.enabled is False


def test_char_counts_read_the_streams_in_chunks_and_through_the_remap():
    ids = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3] * 21, np.uint8)  # 210 ids; the streams keep 208
    batcher = StreamBatcher(ids, 4, 5)
    expected = np.bincount(ids[:208], minlength=5)
    assert np.array_equal(batcher.char_counts(5, chunk_ids=8), expected)  # 26 chunks of 2 columns
    folded = StreamBatcher(ids, 4, 5, remap=np.array([0, 1, 1, 2], np.int32))
    assert folded.char_counts(3, chunk_ids=8).tolist() == [expected[0], expected[1] + expected[2], expected[3]]


def test_log_frequencies_are_add_one_smoothed_log_probabilities():
    np.testing.assert_allclose(np.exp(log_frequencies([3, 1, 0])), [4 / 7, 2 / 7, 1 / 7], rtol=1e-6)


def test_stream_batcher_too_short():
    ids = np.arange(23, dtype=np.uint16)
    with pytest.raises(TextgenError) as err:
        StreamBatcher(ids, batch_size=4, seq_len=5)
    assert str(err.value) == (
        "the corpus is too short for one batch: 23 characters for training, need at least 24 "
        "(batch_size x (seq_len + 1)); use a longer corpus or lower --batch-size / --seq-len"
    )
    assert StreamBatcher(np.arange(24), 4, 5).num_windows == 1
    with pytest.raises(TextgenError, match="10 characters for validation"):
        StreamBatcher(np.arange(10), 4, 5, name="validation")


def test_stream_batcher_dataset_int32_ids_and_short_epoch():
    ids = (np.arange(75, dtype=np.int32) * 1000) % 70001  # large-vocabulary ids
    batcher = StreamBatcher(ids, 3, 4)
    elements = list(batcher.dataset())
    assert len(elements) == batcher.num_windows == 6
    for k, (x, y) in enumerate(elements):
        ref_x, ref_y = batcher.window(k)
        assert x.dtype.name == "int32"
        assert np.array_equal(x.numpy(), ref_x) and np.array_equal(y.numpy(), ref_y)


def test_stream_batcher_dataset_does_not_copy_the_streams():
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    list(StreamBatcher(np.arange(1000, dtype=np.uint16), 2, 10).dataset().take(2))  # warm up tf.data
    ids = np.ones(96 * 2**20, dtype=np.uint16)  # 192 MiB, touched so it is resident
    batcher = StreamBatcher(ids, 64, 100)
    before = proc.memory_info().rss
    dataset = batcher.dataset(start_window=batcher.num_windows - 3)
    elements = list(dataset)
    grown = proc.memory_info().rss - before
    assert len(elements) == 3 and tuple(elements[0][0].shape) == (64, 100)
    assert grown < ids.nbytes // 4, f"RSS grew by {grown / 2**20:.0f} MiB building one epoch"


def test_stream_batcher_dataset_over_a_memmap_releasing_pages(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(4003, dtype=np.uint16).tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r")
    train, val = split_train_val(mapped, 0.25)
    assert isinstance(train, np.memmap) and np.shares_memory(train, mapped)
    assert isinstance(val, np.memmap) and np.shares_memory(val, mapped)
    batcher = StreamBatcher(train, 3, 10, release_every=2)
    assert batcher._mapping is not None and np.shares_memory(batcher.streams, mapped)
    reference = StreamBatcher(np.arange(len(train), dtype=np.uint16), 3, 10)
    elements = list(batcher.dataset(start_window=5))
    assert len(elements) == len(reference) - 5
    for k, (x, y) in enumerate(elements, start=5):
        ref_x, ref_y = reference.window(k)
        assert np.array_equal(x.numpy(), ref_x) and np.array_equal(y.numpy(), ref_y)
        assert np.array_equal(batcher.window(k)[0], ref_x)
