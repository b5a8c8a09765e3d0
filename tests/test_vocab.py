"""Tests for textgen.vocab: encoding round trips, determinism, persistence and errors."""

import json

import numpy as np
import pytest

from textgen.errors import TextgenError
from textgen.vocab import Vocabulary


def chinese_text(n_chars: int = 3000) -> str:
    """Text using `n_chars` distinct CJK ideographs plus Chinese punctuation, in mixed order."""
    rng = np.random.default_rng(0)
    chars = [chr(0x4E00 + i) for i in range(n_chars)] + list("，。、！？：；“”（）《》")
    order = rng.permutation(len(chars) * 3) % len(chars)
    return "".join(chars[i] for i in order) + "\n中文文本。"


def test_round_trip_english():
    text = "The quick brown fox jumps over the lazy dog.\nSecond line!\t~"
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert ids.shape == (len(text),)
    assert ids.dtype == np.uint16 == vocab.dtype
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text
    assert len(vocab) == vocab.size == len(set(text))


def test_round_trip_chinese_thousands_of_chars():
    text = chinese_text()
    vocab = Vocabulary.from_text(text)
    assert vocab.size > 3000
    ids = vocab.encode(text)
    assert ids.max() == vocab.size - 1
    assert vocab.decode(ids) == text
    assert vocab.chars == sorted(set(text))


def test_round_trip_emoji_outside_bmp():
    text = "hi 😀 there 🚀🚀 𝄞 ok é"
    vocab = Vocabulary.from_text(text)
    assert "😀" in vocab.chars and "𝄞" in vocab.chars
    assert len(vocab.encode(text)) == len(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_order_is_deterministic_code_point_order():
    a = Vocabulary.from_text("banana😀中")
    b = Vocabulary.from_text("中😀nabnab")
    assert a == b
    assert a.chars == ["a", "b", "n", "中", "😀"]
    assert a.encode("abn").tolist() == [0, 1, 2]
    assert a != Vocabulary.from_text("abc")


def test_large_vocab_uses_int32():
    chars = [chr(c) for c in range(0x20, 0x20 + 70000) if not 0xD800 <= c < 0xE000]
    vocab = Vocabulary(chars)
    assert vocab.size > 65536 and vocab.dtype == np.int32
    text = "".join(chars[-5:]) + chars[0]
    assert vocab.encode(text).dtype == np.int32
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_chars_and_encode_error_names_them():
    vocab = Vocabulary.from_text("abc")
    assert vocab.unknown_chars("abxcyx😀") == ["x", "y", "😀"]
    assert vocab.unknown_chars("cab") == []
    with pytest.raises(TextgenError) as err:
        vocab.encode("abz中")
    message = str(err.value)
    assert "'z'" in message and "'中'" in message and "\n" not in message


def test_encode_beyond_last_char_is_unknown():
    vocab = Vocabulary.from_text("b")
    with pytest.raises(TextgenError):
        vocab.encode("c")
    with pytest.raises(TextgenError):
        vocab.encode("a")


def test_save_load_round_trip_chinese(tmp_path):
    vocab = Vocabulary.from_text(chinese_text(500) + "abc😀")
    path = tmp_path / "vocab.json"
    vocab.save(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data == {"format": "textgen-vocab", "version": 1, "chars": vocab.chars}
    assert "中" in path.read_text(encoding="utf-8")  # ensure_ascii=False
    assert Vocabulary.load(path) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp files left


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "textgen-vocab", "version": 1, "chars": ["a", "b"',  # truncated
        "",
        "not json at all",
        '["a", "b"]',
        '{"format": "something-else", "version": 1, "chars": ["a"]}',
        '{"format": "textgen-vocab", "version": 99, "chars": ["a"]}',
        '{"format": "textgen-vocab", "version": 1, "chars": "ab"}',
        '{"format": "textgen-vocab", "version": 1, "chars": ["ab", "c"]}',
        '{"format": "textgen-vocab", "version": 1, "chars": ["a", "a"]}',
        '{"format": "textgen-vocab", "version": 1, "chars": [1, 2]}',
    ],
)
def test_load_damaged_file_raises_textgen_error(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TextgenError) as err:
        Vocabulary.load(path)
    message = str(err.value)
    assert str(path) in message and "damaged" in message and "\n" not in message


def test_load_non_utf8_file_raises_textgen_error(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_bytes(b'{"chars": "\xff\xfe"}')
    with pytest.raises(TextgenError):
        Vocabulary.load(path)


def test_load_missing_file_raises_textgen_error(tmp_path):
    path = tmp_path / "nope" / "vocab.json"
    with pytest.raises(TextgenError) as err:
        Vocabulary.load(path)
    assert str(path) in str(err.value) and "missing" in str(err.value)


def test_decode_out_of_range_raises():
    vocab = Vocabulary.from_text("ab")
    with pytest.raises(TextgenError):
        vocab.decode([0, 2])


def test_empty_text():
    vocab = Vocabulary.from_text("")
    assert vocab.size == 0
    assert vocab.encode("").shape == (0,)
    assert vocab.decode([]) == ""
    with pytest.raises(TextgenError):
        vocab.encode("a")


# ---------------------------------------------------------------- chunked encoding


@pytest.fixture
def small_chunks(monkeypatch):
    """Make the chunked scans cross many chunk boundaries on short texts."""
    import textgen.vocab

    monkeypatch.setattr(textgen.vocab, "CHUNK_CHARS", 7)


def reference_encode(vocab, text):
    index = {c: i for i, c in enumerate(vocab.chars)}
    return np.array([index[c] for c in text], dtype=np.int64)


def test_chunked_encode_matches_reference_across_boundaries(small_chunks):
    text = chinese_text(40) + "abc 😀 𝄞 é\n" * 5 + "z"
    vocab = Vocabulary.from_text(text)
    assert vocab.chars == sorted(set(text))
    for piece in (text, text[:6], text[:7], text[:8], text[3:50], ""):
        ids = vocab.encode(piece)
        assert ids.dtype == vocab.dtype and ids.shape == (len(piece),)
        assert np.array_equal(ids, reference_encode(vocab, piece))
        assert vocab.decode(ids) == piece


def test_chunked_unknown_chars_collected_from_every_chunk(small_chunks):
    vocab = Vocabulary.from_text("abcdef")
    text = "abcdefx" + "abcdef" * 3 + "中" + "abc" * 4 + "😀x"
    assert vocab.unknown_chars(text) == ["x", "中", "😀"]
    with pytest.raises(TextgenError) as err:
        vocab.encode(text)
    assert "3 character(s)" in str(err.value) and "'😀'" in str(err.value)
    with pytest.raises(TextgenError):  # the only unknown character is in the last chunk
        vocab.encode("abcdef" * 10 + "g")


def test_encode_rejects_code_points_above_the_largest_known():
    vocab = Vocabulary.from_text("AZ")
    assert vocab.unknown_chars("AZ\U0010ffff[") == ["[", "\U0010ffff"]
    with pytest.raises(TextgenError):
        vocab.encode("A\U0010ffff")
    top = Vocabulary.from_text("a\U0010ffff")
    assert top.encode("\U0010ffffa").tolist() == [1, 0]


def test_lone_surrogates_round_trip_like_set_of_text():
    text = "a\ud800b\udfffa"
    vocab = Vocabulary.from_text(text)
    assert vocab.chars == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text


def test_encode_large_text_allocates_only_the_result():
    import tracemalloc

    text = "the quick brown fox jumps over the lazy dog\n" * 500_000  # 22 MB of ASCII
    vocab = Vocabulary.from_text(text)
    tracemalloc.start()
    ids = vocab.encode(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ids.nbytes == 2 * len(text)
    # the uint16 result plus one chunk's temporaries, not 4 + 8 bytes per character
    assert peak < ids.nbytes + 120 * 2**20
    assert np.array_equal(ids[:44], reference_encode(vocab, text[:44]))


def test_vocabulary_keeping_folds_every_other_character_into_the_unknown_symbol(tmp_path):
    from textgen.vocab import UNKNOWN

    vocab = Vocabulary.keeping(["b", "a"])
    assert vocab.chars == ["a", "b", UNKNOWN] and vocab.unknown == UNKNOWN and vocab.unknown_id == 2
    assert vocab.encode("abz\u4e00a").tolist() == [0, 1, 2, 2, 0]
    assert vocab.unknown_chars("abz") == ["z"]  # still named: eval reports them
    assert vocab.decode([0, 2]) == "a" + UNKNOWN
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
    assert Vocabulary.load(tmp_path / "v.json").unknown == UNKNOWN
    plain = Vocabulary(["a", "b", UNKNOWN])
    assert plain != vocab and plain.unknown is None
    with pytest.raises(TextgenError, match="not in the vocabulary"):
        plain.encode("z")
    with pytest.raises(TextgenError, match="unknown symbol"):
        Vocabulary(["a"], unknown="z")
