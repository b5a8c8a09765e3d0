"""Tests for textgen.data: corpus reading, the default corpus, splitting and stream batching."""

import hashlib
import re

import numpy as np
import pytest

from textgen.data import StreamBatcher, default_corpus, read_corpus, split_train_val
from textgen.errors import TextgenError

# ---------------------------------------------------------------- read_corpus


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_read_single_file(tmp_path):
    path = write(tmp_path / "a.txt", "héllo 中文 😀\nworld")
    assert read_corpus([path]) == "héllo 中文 😀\nworld"
    assert read_corpus([str(path)]) == "héllo 中文 😀\nworld"


def test_read_nested_directory_sorted_hidden_and_binary_skipped(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "B\n")
    write(root / "a.txt", "A\n")
    write(root / "sub" / "c.txt", "C\n")
    write(root / "sub" / "deeper" / "d.txt", "D\n")
    write(root / "z_after.txt", "Z\n")
    write(root / ".hidden.txt", "HIDDEN\n")
    write(root / ".git" / "config", "GIT\n")
    write(root / "image.bin", b"\x89PNG\x00\x01\x02")
    write(root / "latin.txt", "caf\xe9\n".encode("latin-1"))  # not UTF-8: skipped in a dir
    text = read_corpus([root])
    assert text == "A\nB\nC\nD\nZ\n"
    assert read_corpus([root]) == text  # deterministic


def test_read_several_paths_joined_in_order(tmp_path):
    one = write(tmp_path / "one.txt", "first")  # no trailing newline
    two = write(tmp_path / "two.txt", "second\n")
    assert read_corpus([two, one]) == "second\nfirst"
    assert read_corpus([one, two]) == "first\nsecond\n"


def test_crlf_normalised(tmp_path):
    path = write(tmp_path / "win.txt", b"line one\r\nline two\r\n")
    assert read_corpus([path]) == "line one\nline two\n"


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(TextgenError, match="corpus path not found: .*nope.txt"):
        read_corpus([missing])


def test_named_binary_file(tmp_path):
    path = write(tmp_path / "data.bin", b"abc\x00def")
    with pytest.raises(TextgenError) as err:
        read_corpus([path])
    assert str(err.value) == f"{path} looks like a binary file, not text"


def test_non_utf8_reports_byte_offset(tmp_path):
    raw = "abc é ".encode("utf-8") + b"caf\xe9 rest"
    offset = raw.index(b"\xe9 rest")
    path = write(tmp_path / "latin.txt", raw)
    with pytest.raises(TextgenError) as err:
        read_corpus([path])
    message = str(err.value)
    assert message == (
        f"{path} is not valid UTF-8 at byte offset {offset}; "
        "pass --encoding to read it with another encoding"
    )


def test_other_encoding_reads_latin1(tmp_path):
    path = write(tmp_path / "latin.txt", "café crème\n".encode("latin-1"))
    assert read_corpus([path], encoding="latin-1") == "café crème\n"


def test_utf16_is_not_mistaken_for_binary(tmp_path):
    path = write(tmp_path / "u16.txt", "hello 中文\n".encode("utf-16"))
    assert read_corpus([path], encoding="utf-16") == "hello 中文\n"


def test_unknown_encoding(tmp_path):
    path = write(tmp_path / "a.txt", "abc")
    with pytest.raises(TextgenError, match="unknown encoding 'no-such-codec'"):
        read_corpus([path], encoding="no-such-codec")


def test_empty_corpus(tmp_path):
    empty_file = write(tmp_path / "empty.txt", b"")
    with pytest.raises(TextgenError, match="^the corpus is empty: "):
        read_corpus([empty_file])
    empty_dir = tmp_path / "dir"
    write(empty_dir / "only.bin", b"\x00\x01")
    write(empty_dir / ".hidden", "text")
    with pytest.raises(TextgenError, match="^the corpus is empty: "):
        read_corpus([empty_dir])


# ---------------------------------------------------------------- default_corpus


def test_default_corpus_built_once_and_deterministic(tmp_path):
    path = default_corpus(tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and path.name.startswith("python-stdlib-")
    text = path.read_text(encoding="utf-8")
    assert 1_500_000 <= len(text) < 1_500_000 + 2_000_000
    assert text.startswith("# ---- file: ")
    assert "def " in text and "\r\n" not in text
    headers = re.findall(r"^# ---- file: (.+) ----$", text, flags=re.M)
    assert headers == sorted(headers) and len(headers) > 10
    skipped = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}
    assert all(h.endswith(".py") and not skipped & set(h.split("/")[:-1]) for h in headers)
    digest, mtime = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns

    assert default_corpus(tmp_path / "cache") == path  # cached: not rewritten
    assert path.stat().st_mtime_ns == mtime
    rebuilt = default_corpus(tmp_path / "other")  # rebuilt elsewhere: same content
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]
    assert read_corpus([path]) == text


# ---------------------------------------------------------------- split_train_val


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


# ---------------------------------------------------------------- StreamBatcher


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


# ---------------------------------------------------------------- streaming (iter_text)


def test_iter_text_joins_to_read_corpus_at_any_block_size(tmp_path):
    from textgen.data import iter_text

    root = tmp_path / "corpus"
    write(root / "a.txt", "\ufeffone\r\ntwo 中文 😀\r")  # BOM, CRLF, trailing lone CR
    write(root / "b.txt", "\nthree\r\n" * 50)  # bigger than the small blocks
    write(root / "c.txt", b"ok\r\n" * 50 + b"\xff")  # bad only at its end: skipped whole
    write(root / "d.txt", b"x" * 9000 + b"\0 NUL past the sniffed prefix is text")
    named = write(tmp_path / "named.txt", "\ufeffnamed")
    expected = ("one\ntwo 中文 😀\r\n" + "\nthree\n" * 50 + "x" * 9000
                + "\0 NUL past the sniffed prefix is text\nnamed")
    assert read_corpus([root, named]) == expected
    for block_bytes in (1, 2, 3, 4, 13, 1 << 20):
        blocks = list(iter_text([root, named], block_bytes=block_bytes))
        assert all(blocks) and "".join(blocks) == expected


def test_iter_text_progress_counts_bytes_read(tmp_path):
    from textgen.data import iter_text

    path = write(tmp_path / "a.txt", "héllo\n" * 100)
    seen = []
    list(iter_text([path], block_bytes=64, progress=seen.append))
    assert sum(seen) == path.stat().st_size


def test_undecodable_offset_with_a_character_split_between_blocks(tmp_path):
    from textgen.data import iter_text

    raw = "中".encode() * 10 + b"\xe4\xb8" + b"X rest"  # a truncated character at byte 30
    path = write(tmp_path / "bad.txt", raw)
    expected = (f"{path} is not valid UTF-8 at byte offset 30; "
                "pass --encoding to read it with another encoding")
    for block_bytes in (1, 2, 4, 31, 32, 1 << 20):
        with pytest.raises(TextgenError) as err:
            list(iter_text([path], block_bytes=block_bytes))
        assert str(err.value) == expected


def test_named_file_with_nul_after_the_first_block_is_binary(tmp_path):
    from textgen.data import iter_text

    path = write(tmp_path / "data.txt", b"text " * 5000 + b"\0")
    with pytest.raises(TextgenError, match="looks like a binary file"):
        list(iter_text([path], block_bytes=1024))


# ---------------------------------------------------------------- batching from a memmap


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


def test_utf16_without_bom_is_read_in_native_order_at_any_block_size(tmp_path):
    import sys

    from textgen.data import iter_text

    native = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"
    path = write(tmp_path / "u16.txt", "no BOM 中文\r\n".encode(native))
    assert read_corpus([path], encoding="utf-16") == "no BOM 中文\n"
    for block_bytes in (1, 3, 1 << 20):
        assert "".join(iter_text([path], "utf-16", block_bytes=block_bytes)) == "no BOM 中文\n"
