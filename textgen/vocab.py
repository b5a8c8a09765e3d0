"""Character vocabulary: maps each distinct Unicode character of a corpus to an integer id.

Ids follow code-point order (`sorted(set(text))`), so the same corpus always gives the same
vocabulary. Encoding works on numpy arrays of code points, which keeps multi-megabyte corpora
and vocabularies of thousands of characters (Chinese, emoji outside the BMP) fast. Long texts are
scanned in chunks of `CHUNK_CHARS` characters, so the temporary arrays stay a few tens of MB
however long the corpus is (a 200 MB corpus encodes into its 400 MB uint16 id array and little
else). No TensorFlow import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from textgen.atomic import atomic_write_text
from textgen.errors import TextgenError

FORMAT = "textgen-vocab"
VERSION = 1
CHUNK_CHARS = 1 << 22  # characters converted to code points at a time (16 MB of uint32)
MAX_CODE_POINT = 0x10FFFF


def _code_points(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array, shape (len(text),)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _code_point_chunks(text: str):
    """(start, code points of text[start:start + CHUNK_CHARS]) for consecutive chunks of `text`."""
    chunk = CHUNK_CHARS
    for start in range(0, len(text), chunk):
        yield start, _code_points(text[start : start + chunk])


def _chars_problem(chars: object) -> str | None:
    """Why `chars` is not a sorted list of distinct single characters, or None if it is."""
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        return "chars is not a list of single-character strings"
    if any(a >= b for a, b in zip(chars, chars[1:])):
        return "chars are not distinct and sorted"
    return None


UNKNOWN = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER: stands for every character left out (--min-count)


class Vocabulary:
    """A sorted list of distinct characters; a character's id is its index in the list.

    Args:
        chars: the characters, sorted by code point, distinct.
        unknown: if given (one of `chars`, normally UNKNOWN), every character outside the
            vocabulary encodes as this one instead of being refused: the rare-character tail of a
            corpus trained with `--min-count`.

    Example:

        vocab = Vocabulary.keeping(["a", "b"])   # ['a', 'b', '\ufffd'], unknown '\ufffd'
        vocab.encode("abz")                        # [0, 1, 2]
    """

    def __init__(self, chars: Iterable[str], unknown: str | None = None):
        chars = list(chars)
        problem = _chars_problem(chars)
        if problem:
            raise TextgenError(f"invalid vocabulary: {problem}")
        if unknown is not None and unknown not in chars:
            raise TextgenError(f"invalid vocabulary: the unknown symbol {unknown!r} is not one of its characters")
        self.chars: list[str] = chars
        self.unknown = unknown
        self.unknown_id = chars.index(unknown) if unknown is not None else None
        self._codes = _code_points("".join(chars))  # sorted code points, (size,)
        self.dtype = np.dtype(np.uint16 if len(chars) <= 65536 else np.int32)
        self._table_cache: np.ndarray | None = None

    @classmethod
    def keeping(cls, chars: Iterable[str]) -> Vocabulary:
        """The vocabulary of `chars` plus UNKNOWN, which every other character encodes as."""
        return cls(sorted(set(chars) | {UNKNOWN}), unknown=UNKNOWN)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """The vocabulary of every distinct character in `text`, in code-point order.

        Same result as `sorted(set(text))`, computed chunk by chunk with a 1.1 MB table of the
        code points seen, so nothing proportional to the text is built.
        """
        return cls.from_blocks(text[start : start + CHUNK_CHARS]
                               for start in range(0, len(text), CHUNK_CHARS))

    @classmethod
    def from_blocks(cls, blocks: Iterable[str]) -> Vocabulary:
        """The vocabulary of the text that `blocks` join to (a stream, read once)."""
        seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool)  # (0x110000,), 1.1 MB
        for block in blocks:
            seen[_code_points(block)] = True
        return cls(chr(int(c)) for c in np.flatnonzero(seen))

    def _table(self) -> np.ndarray:
        """Id of each code point 0..max(code)+1 as int32, -1 where not in the vocabulary.

        The last entry is always -1, so `take(..., mode="clip")` maps every code point above
        the largest known one to -1 too. At most 4.4 MB (vocabularies reaching U+10FFFF).
        """
        if self._table_cache is None:
            top = int(self._codes[-1]) + 1 if self.size else 0
            table = np.full(top + 1, -1, dtype=np.int32)
            table[self._codes] = np.arange(self.size, dtype=np.int32)
            self._table_cache = table
        return self._table_cache

    @property
    def size(self) -> int:
        """Number of characters (the model's vocab_size)."""
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self.chars, self.unknown) == (other.chars, other.unknown)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size})"

    def unknown_chars(self, text: str) -> list[str]:
        """Sorted distinct characters of `text` that are not in the vocabulary."""
        table = self._table()
        unknown: set[int] = set()
        for _, cps in _code_point_chunks(text):
            missing = cps[table.take(cps, mode="clip") < 0]
            if missing.size:
                unknown.update(np.unique(missing).tolist())
        return [chr(c) for c in sorted(unknown)]

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of `text`, shape (len(text),), dtype `self.dtype`.

        Works chunk by chunk into one preallocated array, so besides the result only
        O(CHUNK_CHARS) temporaries are built. Characters that are not in the vocabulary encode as
        its unknown symbol if it has one; otherwise they raise a TextgenError naming them.
        """
        out = np.empty(len(text), dtype=self.dtype)  # (n,)
        table = self._table()
        for start, cps in _code_point_chunks(text):
            idx = table.take(cps, mode="clip")  # int32 ids, -1 for unknown characters
            if self.unknown_id is not None:
                idx = np.where(idx < 0, self.unknown_id, idx)
            elif idx.min() < 0:
                unknown = self.unknown_chars(text)
                shown = ", ".join(repr(c) for c in unknown[:20])
                more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
                raise TextgenError(
                    f"the text has {len(unknown)} character(s) not in the vocabulary: {shown}{more}"
                )
            out[start : start + len(idx)] = idx
        return out

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text whose characters have the given ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise TextgenError(f"cannot decode ids outside 0..{self.size - 1}")
        return self._codes[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON, atomically (temp file, fsync, rename)."""
        path = Path(path)
        payload = {"format": FORMAT, "version": VERSION, "chars": self.chars}
        if self.unknown is not None:
            payload["unknown"] = self.unknown
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`; any problem raises a one-line TextgenError."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise _damaged(path, "it is missing") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise _damaged(path, f"it is not valid JSON ({type(e).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _damaged(path, f"it is not a {FORMAT} file")
        if data.get("version") != VERSION:
            raise _damaged(path, f"unsupported version {data.get('version')!r}")
        problem = _chars_problem(data.get("chars"))
        if problem:
            raise _damaged(path, problem)
        unknown = data.get("unknown")
        if unknown is not None and not (isinstance(unknown, str) and unknown in data["chars"]):
            raise _damaged(path, "its unknown symbol is not one of its characters")
        return cls(data["chars"], unknown)


def _damaged(path: Path, why: str) -> TextgenError:
    """The error for an unreadable vocabulary file."""
    return TextgenError(
        f"cannot read vocabulary {path}: {why}; the run directory is damaged, "
        "retrain or restore it"
    )


def start_ids(vocab: Vocabulary, prime: str) -> tuple[np.ndarray, bool]:
    """Ids that start generation, and whether to echo them (the prime is echoed; a default start
    character is not). Characters outside the vocabulary are refused, by name, unless the
    vocabulary has an unknown symbol (`--min-count`): then they are read as that."""
    if prime:
        unknown = vocab.unknown_chars(prime)
        if unknown and vocab.unknown is None:
            shown = " ".join(repr(ch) for ch in unknown[:20])
            raise TextgenError(
                f"the prime text has characters the model never saw: {shown}; remove them or "
                "train on a corpus that has them"
            )
        return vocab.encode(prime).astype(np.int32), True
    start = "\n" if "\n" in vocab.chars else vocab.chars[0]
    return vocab.encode(start).astype(np.int32), False
