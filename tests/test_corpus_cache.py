"""Tests for textgen.corpus_cache: corpora encoded once into a memory-mapped id file."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from textgen import corpus_cache
from textgen.corpus import iter_text, read_corpus
from textgen.corpus_cache import encode_corpus, source_bytes
from textgen.data import StreamBatcher, read_only_mapping, split_train_val
from textgen.errors import TextgenError
from textgen.vocab import Vocabulary


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def assert_encodes(corpus, paths, encoding="utf-8", dtype=np.uint8):
    """The cached ids decode to read_corpus's text and equal Vocabulary's encoding of it."""
    text = read_corpus(paths, encoding)
    vocab = Vocabulary.from_text(text)
    assert corpus.chars == vocab.chars and corpus.num_chars == len(text) == len(corpus.ids)
    assert corpus.ids.dtype == dtype
    assert "".join(corpus.chars[i] for i in corpus.ids) == text
    assert np.array_equal(corpus.ids, vocab.encode(text))
    return text


def mixed_directory(root):
    """Several files: no trailing newline, a BOM, CRLF, hidden, binary, undecodable, empty."""
    write(root / "a.txt", b"alpha\r\nbeta")  # CRLF, no trailing newline
    write(root / "b.txt", "\ufeffbom first line\r\nsecond\n")  # UTF-8 BOM
    write(root / "sub" / "c.txt", "gamma 中文 😀")  # no trailing newline
    write(root / "sub" / "empty.txt", b"")
    write(root / "sub" / "only-bom.txt", "\ufeff")
    write(root / "z.txt", "\r\nlast\r")  # starts with CRLF, ends with a lone CR
    write(root / ".hidden.txt", "HIDDEN\n")
    write(root / ".git" / "config", "GIT\n")
    write(root / "image.png", b"\x89PNG\x00\x01\x02" + b"x" * 100)
    write(root / "latin.txt", "caf\xe9\n".encode("latin-1"))  # not UTF-8: skipped in a directory
    return root


# ---------------------------------------------------------------- ids equal the text


def test_directory_of_files_round_trips(tmp_path):
    root = mixed_directory(tmp_path / "corpus")
    extra = write(tmp_path / "extra.txt", "named file\r\n")
    corpus = encode_corpus([root, extra], "utf-8", tmp_path / "cache")
    text = assert_encodes(corpus, [root, extra])
    assert text == "alpha\nbeta\nbom first line\nsecond\ngamma 中文 😀\n\nlast\r\nnamed file\n"
    assert corpus.rebuilt and corpus.paths == [str(root.resolve()), str(extra.resolve())]
    assert corpus.directory.parent == tmp_path / "cache"
    assert corpus.directory.name.startswith("corpus-") and len(corpus.directory.name) == 23
    assert sorted(p.name for p in corpus.directory.iterdir()) == ["corpus.json", "ids.bin"]
    assert corpus.vocabulary() == Vocabulary.from_text(text)
    skipped = {"count": 2, "names": [str(root / "image.png"), str(root / "latin.txt")]}
    assert corpus.skipped == skipped  # binary, undecodable: in reading order
    again = encode_corpus([root, extra], "utf-8", tmp_path / "cache")
    assert not again.rebuilt and again.skipped == skipped  # the reused cache still knows them


def test_skipped_files_are_counted_all_and_named_first_few(tmp_path):
    root = tmp_path / "corpus"
    write(root / "text.txt", "some text\n")
    for i in range(7):
        write(root / f"bin{i}.dat", b"\x00\x01")
    corpus = encode_corpus([root], "utf-8", tmp_path / "cache")
    assert corpus.skipped == {"count": 7, "names": [str(root / f"bin{i}.dat") for i in range(5)]}
    clean = encode_corpus([root / "text.txt"], "utf-8", tmp_path / "cache")
    assert clean.skipped == {"count": 0, "names": []}


def test_chinese_and_emoji_use_uint16(tmp_path):
    han = "".join(chr(0x4E00 + i) for i in range(400))
    path = write(tmp_path / "poems.txt", f"{han}\n😀🎉 mixed with ascii\n{han[::-1]}")
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert_encodes(corpus, [path], dtype=np.uint16)
    assert len(corpus.chars) > 256


def test_more_than_65536_characters_use_uint32(tmp_path):
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    path = write(tmp_path / "wide.txt", chars)
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert_encodes(corpus, [path], dtype=np.uint32)


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 7, 64])
def test_tiny_blocks_split_crlf_bom_and_characters(tmp_path, block_bytes):
    root = tmp_path / "corpus"
    write(root / "a.txt", "\ufeffab\r\ncd\r\n\r\r\n中文\r\n" * 5 + "é\r")
    write(root / "b.txt", "x\r\n😀\r\ny" * 9)  # larger than a block: checked before streaming
    write(root / "c.txt", b"ok\r\n" * 9 + b"\xff bad after many blocks")  # skipped whole
    blocks = list(iter_text([root], block_bytes=block_bytes))
    assert "".join(blocks) == read_corpus([root])
    corpus = encode_corpus([root], "utf-8", tmp_path / "cache", block_bytes=block_bytes)
    assert_encodes(corpus, [root])


def test_latin1_encoding(tmp_path):
    path = write(tmp_path / "latin.txt", "café crème\r\n± ¼ ÿ\n".encode("latin-1"))
    corpus = encode_corpus([path], "latin-1", tmp_path / "cache")
    assert_encodes(corpus, [path], encoding="latin-1")
    with pytest.raises(TextgenError, match="is not valid UTF-8 at byte offset 3"):
        encode_corpus([path], "utf-8", tmp_path / "cache")


def test_progress_reports_bytes_of_both_passes(tmp_path):
    root = mixed_directory(tmp_path / "corpus")
    seen = []
    encode_corpus([root], "utf-8", tmp_path / "cache", progress=seen.append)
    assert 0 < sum(seen) <= 2 * source_bytes([root])
    seen.clear()
    encode_corpus([root], "utf-8", tmp_path / "cache", progress=seen.append)
    assert seen == []  # reused: nothing read


# ---------------------------------------------------------------- reuse and rebuild


def test_reused_without_rebuilding_and_read_only(tmp_path):
    path = write(tmp_path / "a.txt", "hello world\n" * 10)
    first = encode_corpus([path], "utf-8", tmp_path / "cache")
    ids_file = first.directory / "ids.bin"
    mtime = ids_file.stat().st_mtime_ns
    again = encode_corpus([str(path)], "utf-8", tmp_path / "cache")
    assert first.rebuilt and not again.rebuilt
    assert again.directory == first.directory and ids_file.stat().st_mtime_ns == mtime
    assert np.array_equal(again.ids, first.ids) and again.chars == first.chars
    assert isinstance(again.ids, np.memmap) and again.ids.mode == "r"
    assert not again.ids.flags.writeable
    with pytest.raises(ValueError):
        again.ids[0] = 1
    other = encode_corpus([path], "latin-1", tmp_path / "cache")  # the encoding is in the key
    assert other.rebuilt and other.directory != first.directory


def test_changed_file_is_rebuilt(tmp_path):
    path = write(tmp_path / "a.txt", "abc\n")
    first = encode_corpus([path], "utf-8", tmp_path / "cache")
    write(path, "xyz\n")  # same size; make sure the mtime differs too
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    second = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert second.rebuilt and second.directory == first.directory
    assert_encodes(second, [path])
    assert not encode_corpus([path], "utf-8", tmp_path / "cache").rebuilt


def test_added_and_removed_files_are_rebuilt(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.txt", "abc\n")
    assert encode_corpus([root], "utf-8", tmp_path / "cache").rebuilt
    write(root / "b.txt", "new characters: ß\n")
    added = encode_corpus([root], "utf-8", tmp_path / "cache")
    assert added.rebuilt and "ß" in added.chars
    assert_encodes(added, [root])
    (root / "b.txt").unlink()
    removed = encode_corpus([root], "utf-8", tmp_path / "cache")
    assert removed.rebuilt and "ß" not in removed.chars
    write(root / ".hidden", "ignored\n")  # not visited: not part of the fingerprint
    assert not encode_corpus([root], "utf-8", tmp_path / "cache").rebuilt


@pytest.mark.parametrize("damage", ["no ids", "no meta", "truncated ids", "longer ids",
                                    "garbage meta", "meta not a dict", "wrong dtype",
                                    "chars unsorted", "old version"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    path = write(tmp_path / "a.txt", "some text to encode\n")
    directory = encode_corpus([path], "utf-8", tmp_path / "cache").directory
    ids, meta_file = directory / "ids.bin", directory / "corpus.json"
    meta = json.loads(meta_file.read_text())
    if damage == "no ids":
        ids.unlink()
    elif damage == "no meta":
        meta_file.unlink()
    elif damage == "truncated ids":
        ids.write_bytes(ids.read_bytes()[:-1])
    elif damage == "longer ids":
        ids.write_bytes(ids.read_bytes() + b"\0")
    elif damage == "garbage meta":
        meta_file.write_bytes(b"\x00{not json")
    elif damage == "meta not a dict":
        meta_file.write_text("[1, 2]")
    else:
        meta.update({"wrong dtype": {"dtype": "int64"}, "chars unsorted": {"chars": ["b", "a"]},
                     "old version": {"version": 0}}[damage])
        meta_file.write_text(json.dumps(meta))
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert corpus.rebuilt
    assert_encodes(corpus, [path])
    assert not encode_corpus([path], "utf-8", tmp_path / "cache").rebuilt


def test_concurrent_builds_both_succeed(tmp_path):
    path = write(tmp_path / "a.txt", "".join(chr(32 + i % 90) for i in range(3_000_000)))
    script = textwrap.dedent(f"""
        from textgen.corpus_cache import encode_corpus
        c = encode_corpus([{str(path)!r}], "utf-8", {str(tmp_path / "cache")!r})
        print(c.num_chars, int(c.ids[-1]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == f"3000000 {(2_999_999 % 90)}\n"
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert not corpus.rebuilt and corpus.num_chars == 3_000_000
    assert sorted(p.name for p in corpus.directory.iterdir()) == ["corpus.json", "ids.bin"]


def test_stale_temp_file_of_a_dead_build_is_removed(tmp_path):
    path = write(tmp_path / "a.txt", "abc\n")
    directory = encode_corpus([path], "utf-8", tmp_path / "cache").directory
    stale = write(directory / ".ids.bin.999999999.abc123.tmp", b"half written")
    os.utime(stale, (0, 0))  # written long ago by a process that no longer exists
    recent = write(directory / ".ids.bin.999999999.def456.tmp", b"maybe another host's")
    alive = write(directory / f".ids.bin.{os.getpid()}.ghi789.tmp", b"a live build")
    os.utime(alive, (0, 0))
    (directory / "corpus.json").unlink()
    assert encode_corpus([path], "utf-8", tmp_path / "cache").rebuilt
    assert not stale.exists() and recent.exists() and alive.exists()


# ---------------------------------------------------------------- errors


def error_of(call, *args, **kwargs):
    with pytest.raises(TextgenError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "undecodable", "unknown encoding"])
def test_source_errors_match_read_corpus(tmp_path, case):
    encoding = "no-such-codec" if case == "unknown encoding" else "utf-8"
    path = {"missing": tmp_path / "nope.txt",
            "empty": write(tmp_path / "empty.txt", b""),
            "binary": write(tmp_path / "data.bin", b"abc\x00def"),
            "undecodable": write(tmp_path / "bad.txt", "é".encode() * 3000 + b"\xe9 rest"),
            "unknown encoding": write(tmp_path / "a.txt", "abc")}[case]
    message = error_of(encode_corpus, [path], encoding, tmp_path / "cache", block_bytes=1001)
    assert message == error_of(read_corpus, [path], encoding)
    if case == "undecodable":
        assert message.endswith("at byte offset 6000; pass --encoding to read it with another "
                                "encoding")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_unwritable_cache_root(tmp_path):
    path = write(tmp_path / "a.txt", "abc\n")
    if os.geteuid() == 0:  # root ignores permissions: make the cache root a file instead
        cache_root = write(tmp_path / "cache", b"a file, not a directory")
    else:
        cache_root = tmp_path / "cache"
        cache_root.mkdir()
        cache_root.chmod(0o500)
    try:
        message = error_of(encode_corpus, [path], "utf-8", cache_root)
    finally:
        if cache_root.is_dir():
            cache_root.chmod(0o700)
    assert message.startswith(f"cannot write the corpus cache {cache_root}{os.sep}corpus-")
    assert message.endswith("; make it writable or choose another --runs-dir")


def test_disk_full_leaves_no_half_written_ids(tmp_path, monkeypatch):
    path = write(tmp_path / "a.txt", "abc\n" * 1000)

    def full(out, *args):
        out.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus_cache, "_write_ids", full)
    message = error_of(encode_corpus, [path], "utf-8", tmp_path / "cache")
    assert message.endswith(": No space left on device; free some disk space or choose another "
                            "--runs-dir")
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*")]
    assert leftovers == []  # no ids.bin, no temporary file, no empty directory
    monkeypatch.undo()
    assert_encodes(encode_corpus([path], "utf-8", tmp_path / "cache"), [path])


def test_corpus_changed_while_encoding_is_one_line_and_leaves_no_cache(tmp_path):
    path = write(tmp_path / "a.txt", "abc\n" * 1000)
    appended = []

    def grow_once(_bytes):  # the source grows between the two passes
        if not appended:
            appended.append(True)
            with open(path, "a", encoding="utf-8") as f:
                f.write("xyz\n")

    message = error_of(encode_corpus, [path], "utf-8", tmp_path / "cache", progress=grow_once)
    assert message == (f"the corpus changed while it was being encoded ({path}); "
                       "run again once it has stopped changing")
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == []
    assert_encodes(encode_corpus([path], "utf-8", tmp_path / "cache"), [path])


# ---------------------------------------------------------------- batching from the mapping


def test_stream_batcher_over_memmap_matches_in_memory(tmp_path):
    path = write(tmp_path / "a.txt", "".join(chr(33 + (i * 7) % 90) for i in range(5000)))
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    train, val = split_train_val(corpus.ids, 0.1)
    assert isinstance(train, np.memmap) and isinstance(val, np.memmap)
    assert np.shares_memory(train, corpus.ids) and np.shares_memory(val, corpus.ids)
    in_memory = np.array(corpus.ids)
    for release_every in (None, 1, 3):
        mapped = StreamBatcher(train, 4, 16, release_every=release_every)
        plain = StreamBatcher(in_memory[: len(train)], 4, 16)
        assert mapped._mapping is corpus.ids._mmap and plain._mapping is None
        assert np.shares_memory(mapped.streams, corpus.ids)
        assert len(mapped) == len(plain) > 10
        for k in range(len(mapped)):
            for a, b in zip(mapped.window(k), plain.window(k)):
                assert a.dtype == np.int32 and np.array_equal(a, b)
    assert StreamBatcher(np.asarray(val), 2, 8)._mapping is corpus.ids._mmap  # found via .base


def test_copy_on_write_memmap_is_never_released(tmp_path):
    path = write(tmp_path / "ids.bin", bytes(range(200)))
    private = np.memmap(path, dtype=np.uint8, mode="c")
    assert read_only_mapping(private) is None
    assert read_only_mapping(np.memmap(path, dtype=np.uint8, mode="r")[10:]) is not None


def rss_file_bytes():
    """File-backed resident memory of this process (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith("RssFile:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def test_page_release_keeps_mapped_memory_flat(tmp_path):
    if rss_file_bytes() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    size = 48 << 20
    path = tmp_path / "ids.bin"
    with open(path, "wb") as f:
        f.writelines(bytes([i]) * (1 << 20) for i in range(48))  # MiB i holds byte i
    grown = {}
    for release_every in (4, 10**9):
        ids = np.memmap(path, dtype=np.uint8, mode="r")
        batcher = StreamBatcher(ids, 8, 1 << 16, release_every=release_every)
        before, grown[release_every] = rss_file_bytes(), 0
        for k in range(len(batcher)):
            x, _ = batcher.window(k)
            assert x[0, 0] == (k << 16) >> 20  # row 0 starts in MiB k // 16
            grown[release_every] = max(grown[release_every], rss_file_bytes() - before)
        del batcher, ids
    # Released every 4 windows (2 MiB of ids), the mapping stays near batch x the kernel's
    # fault-around / folio size; never released, all 48 MiB of it end up resident.
    assert grown[4] < 16 << 20, f"{grown[4] >> 20} MiB of the mapping stayed resident"
    assert grown[10**9] > size // 2  # the measurement does see pages that are not released


# ---------------------------------------------------------------- memory while building


def test_building_keeps_resident_memory_flat(tmp_path):
    chunk = "".join(chr(c) for c in np.random.default_rng(0).integers(32, 127, 1 << 20))
    chunk = chunk.replace("~", "中").replace("}", "é\n")  # multi-byte characters, lines
    corpus = tmp_path / "big"
    corpus.mkdir()
    for name in ("a.txt", "b.txt"):  # 2 x 30 MiB in a directory
        with open(corpus / name, "w", encoding="utf-8") as f:
            f.writelines(chunk for _ in range(30))
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        from textgen.corpus_cache import encode_corpus

        def peak():
            # Linux: VmHWM, this process's own peak (ru_maxrss can start at the peak of the
            # parent it was forked from); elsewhere ru_maxrss (bytes on macOS, else KiB).
            try:
                with open("/proc/self/status") as f:
                    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
            except (OSError, StopIteration):
                unit = 1 if sys.platform == "darwin" else 1024
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit

        encode_corpus([{str(tmp_path / "warm.txt")!r}], "utf-8", {str(tmp_path / "warm")!r})
        base = peak()
        c = encode_corpus([{str(corpus)!r}], "utf-8", {str(tmp_path / "cache")!r})
        print(c.num_chars, peak() - base)
    """)
    write(tmp_path / "warm.txt", "warm up the code paths\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    num_chars, grown = map(int, out.split())
    assert num_chars == 60 * len(chunk) + (not chunk.endswith("\n"))  # newline between files
    assert grown < 40 << 20, f"peak RSS grew by {grown >> 20} MiB encoding a 60 MiB corpus"


def test_counts_and_the_model_vocabulary_of_a_min_count(tmp_path):
    from textgen.vocab import UNKNOWN

    path = tmp_path / "c.txt"
    path.write_text("aaaabbbcd" * 3 + "é", encoding="utf-8")
    corpus = encode_corpus([path], "utf-8", tmp_path / "cache")
    assert dict(zip(corpus.chars, corpus.counts)) == {"a": 12, "b": 9, "c": 3, "d": 3, "é": 1}
    vocab, remap, folded = corpus.model_vocabulary(4)
    assert vocab.chars == ["a", "b", UNKNOWN] and vocab.unknown == UNKNOWN
    assert remap.tolist() == [0, 1, 2, 2, 2]  # stored ids a b c d é -> model ids
    assert folded == {"min_count": 4, "rare_chars": 3, "rare_occurrences": 7}
    assert corpus.model_vocabulary(1)[1] is None and corpus.model_vocabulary(1)[0].chars == corpus.chars
