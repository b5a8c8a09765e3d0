"""Tests for textgen.corpus: reading files and directories as text, streaming, the default corpus."""

import hashlib
import re

import pytest

from textgen.corpus import default_corpus, read_corpus
from textgen.errors import TextgenError


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


def test_iter_text_joins_to_read_corpus_at_any_block_size(tmp_path):
    from textgen.corpus import iter_text

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
    from textgen.corpus import iter_text

    path = write(tmp_path / "a.txt", "héllo\n" * 100)
    seen = []
    list(iter_text([path], block_bytes=64, progress=seen.append))
    assert sum(seen) == path.stat().st_size


def test_undecodable_offset_with_a_character_split_between_blocks(tmp_path):
    from textgen.corpus import iter_text

    raw = "中".encode() * 10 + b"\xe4\xb8" + b"X rest"  # a truncated character at byte 30
    path = write(tmp_path / "bad.txt", raw)
    expected = (f"{path} is not valid UTF-8 at byte offset 30; "
                "pass --encoding to read it with another encoding")
    for block_bytes in (1, 2, 4, 31, 32, 1 << 20):
        with pytest.raises(TextgenError) as err:
            list(iter_text([path], block_bytes=block_bytes))
        assert str(err.value) == expected


def test_named_file_with_nul_after_the_first_block_is_binary(tmp_path):
    from textgen.corpus import iter_text

    path = write(tmp_path / "data.txt", b"text " * 5000 + b"\0")
    with pytest.raises(TextgenError, match="looks like a binary file"):
        list(iter_text([path], block_bytes=1024))


def test_utf16_without_bom_is_read_in_native_order_at_any_block_size(tmp_path):
    import sys

    from textgen.corpus import iter_text

    native = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"
    path = write(tmp_path / "u16.txt", "no BOM 中文\r\n".encode(native))
    assert read_corpus([path], encoding="utf-16") == "no BOM 中文\n"
    for block_bytes in (1, 3, 1 << 20):
        assert "".join(iter_text([path], "utf-16", block_bytes=block_bytes)) == "no BOM 中文\n"
