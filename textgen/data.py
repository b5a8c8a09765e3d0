"""Corpus reading and sequence batching for truncated backpropagation through time.

`iter_text` streams the text of files and directories in blocks, in constant memory, and
`read_corpus` is that stream joined into one string (one code path, so the two always agree;
`textgen.corpus_cache` encodes the stream into a memory-mapped id file). `default_corpus`
builds the built-in corpus from the running Python's standard library; `split_train_val` holds
out the tail of the encoded corpus (as views); `StreamBatcher` cuts ids, in memory or
memory-mapped, into stateful (x, y) windows. TensorFlow is imported lazily, only by
`StreamBatcher.dataset`.
"""

from __future__ import annotations

import codecs
import mmap
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from textgen.atomic import atomic_write_text
from textgen.errors import TextgenError

BINARY_SNIFF_BYTES = 8192
DEFAULT_CORPUS_CHARS = 1_500_000
STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}
RELEASE_BYTES = 64 << 20  # window bytes read from a memory-mapped corpus between page releases


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


def _path_list(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """`paths` as a list of Paths (a single str or Path is one path)."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def corpus_files(paths: Sequence[str | Path] | str | Path) -> Iterator[tuple[Path, bool]]:
    """(file, named) for every file the corpus reading visits, in reading order.

    A file the user named comes as given (named True); a directory contributes its non-hidden
    files, sorted (named False). TextgenError for a path that does not exist.
    """
    for path in _path_list(paths):
        if not path.exists():
            raise TextgenError(f"corpus path not found: {path}")
        if path.is_dir():
            yield from ((file, False) for file in _files_under(path))
        else:
            yield path, True


def read_corpus(paths: Sequence[str | Path], encoding: str = "utf-8") -> str:
    """Read files and directories (walked recursively, sorted) into one string.

    Files are joined in order (a newline is added between files when one is missing), a BOM at
    the start of a file is dropped and `\\r\\n` becomes `\\n`. Hidden files and directories are
    skipped; so are binary or undecodable files found inside directories. Problems raise a
    one-line TextgenError. This is `iter_text` joined, so the two always agree.
    """
    return "".join(iter_text(paths, encoding))


def iter_text(paths: Sequence[str | Path], encoding: str = "utf-8", block_bytes: int = 1 << 20,
              progress: Callable[[int], object] | None = None) -> Iterator[str]:
    """Stream the text `read_corpus` returns in blocks (about `block_bytes` bytes of input each).

    The blocks join to exactly `read_corpus(paths, encoding)`, with the same rules and errors
    (a named binary or undecodable file is refused with its byte offset, such files inside a
    directory are skipped, an empty corpus is refused when the stream ends), but nothing is held
    whole. `progress(n)`, if given, is called with the number of bytes of each read.
    """
    shown = _check_encoding(encoding)
    paths = _path_list(paths)
    tail = None  # last character streamed so far; None while the corpus has no text yet
    for file, named in corpus_files(paths):
        first = True
        for block in _file_text(file, encoding, shown, block_bytes, named, progress):
            if first and tail not in (None, "\n"):
                yield "\n"  # the previous file did not end its last line
            first = False
            yield block
            tail = block[-1]
    if tail is None:
        names = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise TextgenError(
            f"the corpus is empty: no text found in {names}; pass files or directories with text"
        )


def _file_text(file: Path, encoding: str, shown: str, block_bytes: int, named: bool,
               progress: Callable[[int], object] | None) -> Iterator[str]:
    """Non-empty blocks of one file's text, as `iter_text` joins them.

    A named file's problems raise TextgenError. A file found in a directory that is unreadable,
    binary or undecodable yields nothing at all: one that fits in a block is checked whole before
    its block is yielded; a larger one is read through once first (without `progress`), so a
    problem deep inside it cannot cut it short after part of it was streamed.
    """
    if named:
        yield from _stream_file(file, encoding, shown, block_bytes, named, progress)
        return
    streamed = False
    try:
        if file.stat().st_size >= block_bytes:
            for _ in _stream_file(file, encoding, shown, block_bytes, named):
                pass
        for block in _stream_file(file, encoding, shown, block_bytes, named, progress):
            streamed = True
            yield block
    except (OSError, TextgenError):
        if streamed:  # it changed between the check and the read: refuse rather than cut it
            raise


def _stream_file(path: Path, encoding: str, shown: str, block_bytes: int, named: bool,
                 progress: Callable[[int], object] | None = None) -> Iterator[str]:
    """Decoded blocks of one file: BOM dropped, CRLF normalised (also across blocks).

    TextgenError for an unreadable file, a binary one (a NUL byte anywhere in a named file, in
    the first BINARY_SNIFF_BYTES bytes of one found in a directory) or an undecodable one (with
    the byte offset of the first bad byte). A regular file's last block is known by its short
    read, so it is decoded with `final=True` before anything of it is yielded.
    """
    nul_is_binary = _nul_means_binary(encoding)
    offset, carry, at_start = 0, "", True  # carry: a "\r" kept until we see whether "\n" follows
    try:
        with open(path, "rb") as f:
            decoder = _incremental_decoder(encoding, f.peek(4)[:4])
            while True:
                raw = f.read(block_bytes)
                if progress:
                    progress(len(raw))
                final = len(raw) < block_bytes
                sniffed = raw if named else raw[: max(0, BINARY_SNIFF_BYTES - offset)]
                if nul_is_binary and b"\0" in sniffed:
                    raise TextgenError(f"{path} looks like a binary file, not text")
                text = _decode_block(decoder, raw, final, offset, path, shown)
                offset += len(raw)
                if at_start and text:
                    text, at_start = text.removeprefix("\ufeff"), False
                text = carry + text
                carry = "\r" if text.endswith("\r") and not final else ""
                text = text[: len(text) - len(carry)].replace("\r\n", "\n")
                if text:
                    yield text
                if final:
                    return
    except OSError as e:
        raise TextgenError(f"cannot read {path}: {e.strerror}") from None


def _incremental_decoder(encoding: str, head: bytes) -> codecs.IncrementalDecoder:
    """A decoder for a file starting with `head` (its first 4 bytes).

    A UTF-16 or UTF-32 file without a BOM is read in this machine's byte order, as
    `bytes.decode` does (Python's incremental decoders for them refuse such a file).
    """
    name = codecs.lookup(encoding).name
    boms = {"utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
            "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)}.get(name)
    if boms and not head.startswith(boms):
        name += "-le" if sys.byteorder == "little" else "-be"
    return codecs.getincrementaldecoder(name)()


def _decode_block(decoder: codecs.IncrementalDecoder, raw: bytes, final: bool, offset: int,
                  path: Path, shown: str) -> str:
    """`decoder.decode(raw, final)`; TextgenError with the file's byte offset if it fails.

    `offset` is the position of `raw` in the file; the decoder may still hold the first bytes
    of a character split by the previous read, and reports positions from those.
    """
    held = decoder.getstate()[0]
    held = len(held) if isinstance(held, bytes) else 0
    try:
        return decoder.decode(raw, final=final)
    except UnicodeDecodeError as e:
        where = f"at byte offset {offset - held + e.start}"
    except UnicodeError as e:  # a codec's own complaint, without a position
        where = f"({e})"
    raise TextgenError(f"{path} is not valid {shown} {where}; "
                       "pass --encoding to read it with another encoding")


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
    """Split ids by position: the last `val_fraction` of them is the validation slice.

    Both parts are views (slices) of `ids`, never copies: of a np.memmap they are memmaps too.
    """
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

    `ids` may be a read-only np.memmap (see `textgen.corpus_cache`), or a view of one: the
    streams are then views of the mapping, never copied, and only the windows are read. Pages a
    long epoch reads would stay mapped and count in the process's resident memory, so every
    `release_every` windows (default: about RELEASE_BYTES of windows) they are released (see
    `_release_pages`); for ordinary arrays, and where madvise is missing, nothing is done.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, name: str = "training",
                 release_every: int | None = None):
        self._mapping = _read_only_mapping(ids)  # before asarray, which drops the memmap class
        ids = np.asarray(ids)  # a memmap (or a view of one) becomes an ndarray view: no copy
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
        # compact dtype kept as is (a view: 1-D slices are contiguous); cast to int32 per window
        self.streams = ids[: batch_size * self.stream_len].reshape(batch_size, self.stream_len)
        window_bytes = batch_size * seq_len * ids.itemsize
        self.release_every = release_every or max(1, RELEASE_BYTES // window_bytes)

    def __len__(self) -> int:
        return self.num_windows

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Window k as int32 arrays x, y of shape (batch_size, seq_len)."""
        if not 0 <= k < self.num_windows:
            raise IndexError(f"window {k} out of range 0..{self.num_windows - 1}")
        start = k * self.seq_len
        x = self.streams[:, start : start + self.seq_len]  # (batch, seq_len)
        y = self.streams[:, start + 1 : start + self.seq_len + 1]  # (batch, seq_len)
        x, y = x.astype(np.int32), y.astype(np.int32)  # copies of this window only
        self._window_read(k)
        return x, y

    def _window_read(self, k: int) -> None:
        """Called once window k has been copied out: release the mapping's pages now and then."""
        if self._mapping is not None and (k + 1) % self.release_every == 0:
            _release_pages(self._mapping)

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
        batch, seq_len, window_read = self.batch_size, self.seq_len, self._window_read

        def block(k):  # numpy: window k and its one-step-ahead targets, (batch, seq_len + 1)
            start = int(k) * seq_len
            w = streams[:, start : start + seq_len + 1].astype(np.int32)
            window_read(int(k))
            return w

        def cut(k):
            w = tf.numpy_function(block, [k], tf.int32, stateful=False)
            w.set_shape((batch, seq_len + 1))
            return w[:, :-1], w[:, 1:]  # x, y: (batch, seq_len) each

        windows = tf.data.Dataset.range(start_window, self.num_windows)
        return windows.map(cut).prefetch(tf.data.AUTOTUNE)


def _read_only_mapping(ids) -> mmap.mmap | None:
    """The mmap under `ids` if it is a read-only np.memmap or a view of one, else None.

    Walks the `.base` chain, so `np.asarray(memmap)` and slices of it are found too. Only mode
    "r" qualifies: a copy-on-write memmap (mode "c") may hold private pages that releasing them
    would lose. None where the platform has no madvise (Windows).
    """
    if not hasattr(mmap, "MADV_DONTNEED") or not hasattr(mmap.mmap, "madvise"):
        return None
    obj = ids
    while obj is not None and not isinstance(obj, np.memmap):
        obj = getattr(obj, "base", None)
    if obj is None or obj.mode != "r" or not isinstance(getattr(obj, "_mmap", None), mmap.mmap):
        return None
    return obj._mmap


def _release_pages(mapping: mmap.mmap) -> None:
    """Drop the mapping's pages from this process's resident set (the data stays).

    The mapping is of a file opened read-only (MAP_SHARED, never written through it), so its
    pages are clean copies of the file held in the kernel's page cache: MADV_DONTNEED only
    unmaps them from this process. The next read of them faults them back in from the page cache
    (or the file), with the same contents; nothing is lost. Failures are ignored: releasing is
    an optimisation, never needed for correctness.
    """
    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # ValueError: the mapping was closed
        pass
