"""Corpus reading and sequence batching for truncated backpropagation through time.

`read_corpus` turns files and directories into one string; `default_corpus` builds the
built-in corpus from the running Python's standard library; `split_train_val` holds out the
tail of the encoded corpus; `StreamBatcher` cuts ids into stateful (x, y) windows.
TensorFlow is imported lazily, only by `StreamBatcher.dataset`.
"""

from __future__ import annotations

import codecs
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from textgen.atomic import atomic_write_text
from textgen.errors import TextgenError

BINARY_SNIFF_BYTES = 8192
DEFAULT_CORPUS_CHARS = 1_500_000
STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}


# ---------------------------------------------------------------- reading the corpus


def _check_encoding(encoding: str) -> str:
    """The name to show for `encoding` in messages; TextgenError if Python does not know it."""
    try:
        canonical = codecs.lookup(encoding).name
    except LookupError:
        raise TextgenError(
            f"unknown encoding {encoding!r}; pass an --encoding Python knows, "
            "such as utf-8, latin-1 or cp1252"
        ) from None
    return "UTF-8" if canonical == "utf-8" else encoding


def _nul_means_binary(encoding: str) -> bool:
    """False for encodings such as UTF-16 whose text legitimately contains NUL bytes."""
    return b"\0" not in "a".encode(encoding)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _files_under(directory: Path) -> list[Path]:
    """Every non-hidden file below `directory`, sorted by relative path (deterministic)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        found += [Path(root, f) for f in files if not _is_hidden(f)]
    return sorted(found, key=lambda p: p.relative_to(directory).parts)


def _read_named_file(path: Path, encoding: str, shown: str) -> str:
    """Text of a file the user named; every problem is a TextgenError."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TextgenError(f"cannot read {path}: {e.strerror}") from None
    if _nul_means_binary(encoding) and b"\0" in raw:
        raise TextgenError(f"{path} looks like a binary file, not text")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise TextgenError(
            f"{path} is not valid {shown} at byte offset {e.start}; "
            "pass --encoding to read it with another encoding"
        ) from None


def _read_dir_file(path: Path, encoding: str) -> str | None:
    """Text of a file found in a directory, or None if it is binary or unreadable."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if _nul_means_binary(encoding) and b"\0" in raw[:BINARY_SNIFF_BYTES]:
        return None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def _texts_of(path: Path, encoding: str, shown: str) -> list[str]:
    """Texts of one corpus path: a file, or every readable text file below a directory."""
    if not path.exists():
        raise TextgenError(f"corpus path not found: {path}")
    if path.is_dir():
        texts = (_read_dir_file(p, encoding) for p in _files_under(path))
        return [t for t in texts if t is not None]
    return [_read_named_file(path, encoding, shown)]


def read_corpus(paths: Sequence[str | Path], encoding: str = "utf-8") -> str:
    """Read files and directories (walked recursively, sorted) into one string.

    Files are joined in order (a newline is added between files when one is missing) and
    `\\r\\n` becomes `\\n`. Hidden files and directories are skipped; so are binary or
    undecodable files found inside directories. Problems raise a one-line TextgenError.
    """
    shown = _check_encoding(encoding)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    texts = []
    for path in paths:
        texts += _texts_of(Path(path), encoding, shown)
    texts = [t.removeprefix("\ufeff").replace("\r\n", "\n") for t in texts]
    texts = [t for t in texts if t]
    text = "".join(t if i == len(texts) - 1 or t.endswith("\n") else t + "\n"
                   for i, t in enumerate(texts))
    if not text:
        names = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise TextgenError(
            f"the corpus is empty: no text found in {names}; pass files or directories with text"
        )
    return text


def iter_text(paths: Sequence[str | Path], encoding: str = "utf-8",
              block_bytes: int = 1 << 20) -> Iterator[str]:
    """Stream the text of files and directories in blocks, in constant memory.

    Same rules and errors as `read_corpus` (a named binary or undecodable file is refused with its
    byte offset; such files inside a directory are skipped), but nothing is held whole.
    """
    shown = _check_encoding(encoding)
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if not path.exists():
            raise TextgenError(f"corpus path not found: {path}")
        files = _files_under(path) if path.is_dir() else [path]
        for file in files:
            try:
                yield from _stream_file(file, encoding, shown, block_bytes)
            except TextgenError:
                if not path.is_dir():
                    raise


def _stream_file(path: Path, encoding: str, shown: str, block_bytes: int) -> Iterator[str]:
    """Decoded blocks of one file, CRLF normalised; TextgenError for binary or undecodable."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, pending_cr = 0, False
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(block_bytes)
                if offset == 0 and _nul_means_binary(encoding) and b"\0" in raw[:BINARY_SNIFF_BYTES]:
                    raise TextgenError(f"{path} looks like a binary file, not text")
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    raise TextgenError(
                        f"{path} is not valid {shown} at byte offset {offset + e.start}; "
                        "pass --encoding to read it with another encoding"
                    ) from None
                offset += len(raw)
                if pending_cr:
                    text = "\r" + text
                pending_cr = text.endswith("\r") and bool(raw)
                if pending_cr:
                    text = text[:-1]
                if text:
                    yield text.replace("\r\n", "\n")
                if not raw:
                    return
    except OSError as e:
        raise TextgenError(f"cannot read {path}: {e.strerror}") from None


# ---------------------------------------------------------------- the built-in corpus


def _stdlib_sources(stdlib: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the stdlib's *.py files outside skipped dirs, sorted."""
    found = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in STDLIB_SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                path = Path(root, name)
                found.append((path.relative_to(stdlib).as_posix(), path))
    return sorted(found)


def _build_stdlib_text(stdlib: Path, limit: int = DEFAULT_CORPUS_CHARS) -> str:
    """Concatenate stdlib sources, each under a header line, until `limit` characters."""
    parts, total = [], 0
    for rel, path in _stdlib_sources(stdlib):
        try:
            source = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\0" in source:
            continue
        source = source.replace("\r\n", "\n")
        if source and not source.endswith("\n"):
            source += "\n"
        part = f"# ---- file: {rel} ----\n{source}"
        parts.append(part)
        total += len(part)
        if total >= limit:
            break
    return "".join(parts)


def default_corpus(cache_dir: str | Path = "corpora") -> Path:
    """Path of the built-in corpus: ~1.5 MB of this Python's standard library source.

    Built once (deterministically) into `<cache_dir>/python-stdlib-<major.minor>.txt`;
    later calls return the cached file without rebuilding it.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"python-stdlib-{sys.version_info[0]}.{sys.version_info[1]}.txt"
    if target.is_file():
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = _build_stdlib_text(stdlib) if stdlib.is_dir() else ""
    if not text:
        raise TextgenError(
            f"cannot build the default corpus: no Python sources found in {stdlib}; "
            "pass a corpus path instead"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except OSError as e:
        raise TextgenError(f"cannot write the default corpus to {target}: {e.strerror}") from None
    return target


# ---------------------------------------------------------------- splitting and batching


def split_train_val(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split ids by position: the last `val_fraction` of them is the validation slice."""
    if not 0 <= val_fraction < 0.5:
        raise TextgenError(f"--val-fraction must be at least 0 and below 0.5, got {val_fraction}")
    n_val = int(len(ids) * val_fraction)
    n_train = len(ids) - n_val
    return ids[:n_train], ids[n_train:]


class StreamBatcher:
    """Cut a 1-D id array into (x, y) windows whose rows continue across windows.

    The text is laid out as `batch_size` contiguous streams, one per batch row:

        stream_len = len(ids) // batch_size
        streams    = ids[:batch_size * stream_len].reshape(batch_size, stream_len)

    Row b holds ids[b*stream_len : (b+1)*stream_len]. Window k takes columns
    k*seq_len .. (k+1)*seq_len of every row as x, and the same columns shifted by one as the
    targets y. Row b of window k+1 starts exactly where row b of window k stopped, so an
    LSTM's state can be carried from one window to the next (truncated BPTT).
    `num_windows = (stream_len - 1) // seq_len`; the leftover tail is dropped.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, name: str = "training"):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if batch_size < 1 or seq_len < 1:
            raise TextgenError(f"batch size and sequence length must be at least 1, "
                               f"got {batch_size} and {seq_len}")
        self.batch_size, self.seq_len, self.name = batch_size, seq_len, name
        self.stream_len = len(ids) // batch_size
        self.num_windows = max(0, (self.stream_len - 1) // seq_len)
        if self.num_windows < 1:
            need = batch_size * (seq_len + 1)
            hint = " or raise --val-fraction" if name != "training" else ""
            raise TextgenError(
                f"the corpus is too short for one batch: {len(ids)} characters for {name}, "
                f"need at least {need} (batch_size x (seq_len + 1)); use a longer corpus "
                f"or lower --batch-size / --seq-len{hint}"
            )
        # compact dtype kept as is; cast to int32 per window
        self.streams = ids[: batch_size * self.stream_len].reshape(batch_size, self.stream_len)

    def __len__(self) -> int:
        return self.num_windows

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Window k as int32 arrays x, y of shape (batch_size, seq_len)."""
        if not 0 <= k < self.num_windows:
            raise IndexError(f"window {k} out of range 0..{self.num_windows - 1}")
        start = k * self.seq_len
        x = self.streams[:, start : start + self.seq_len]  # (batch, seq_len)
        y = self.streams[:, start + 1 : start + self.seq_len + 1]  # (batch, seq_len)
        return x.astype(np.int32), y.astype(np.int32)

    def dataset(self, start_window: int = 0):
        """A tf.data.Dataset of windows start_window..num_windows-1, in order (one epoch).

        Each element is (x, y), int32 tensors of shape (batch_size, seq_len). Windows are
        sliced on the fly from the compact numpy streams by a `tf.numpy_function`, so no copy
        of the streams is made (a `tf.constant(self.streams)` would copy the whole training
        set into a tensor at every epoch); each window is one (batch, seq_len + 1) int32 block
        whose x and y are views shifted by one.
        """
        import tensorflow as tf

        if not 0 <= start_window <= self.num_windows:
            raise IndexError(f"start_window {start_window} out of range 0..{self.num_windows}")
        streams = self.streams  # (batch, stream_len), compact dtype; shared, not copied
        batch, seq_len = self.batch_size, self.seq_len

        def block(k):  # numpy: window k and its one-step-ahead targets, (batch, seq_len + 1)
            start = int(k) * seq_len
            return streams[:, start : start + seq_len + 1].astype(np.int32)

        def cut(k):
            w = tf.numpy_function(block, [k], tf.int32, stateful=False)
            w.set_shape((batch, seq_len + 1))
            return w[:, :-1], w[:, 1:]  # x, y: (batch, seq_len) each

        windows = tf.data.Dataset.range(start_window, self.num_windows)
        return windows.map(cut).prefetch(tf.data.AUTOTUNE)
