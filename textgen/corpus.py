"""Reading a corpus: files and directories streamed as text, and the built-in default corpus.

`iter_text` streams the text of files and directories in blocks, in constant memory, and
`read_corpus` is that stream joined into one string (one code path, so the two always agree;
`textgen.corpus_cache` encodes the stream into a memory-mapped id file). `default_corpus`
builds the built-in corpus from the running Python's standard library. No TensorFlow here.
"""

from __future__ import annotations

import codecs
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from textgen.atomic import atomic_write_text
from textgen.errors import TextgenError

BINARY_SNIFF_BYTES = 8192
DEFAULT_CORPUS_CHARS = 1_500_000
STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}


# ---------------------------------------------------------------- reading the corpus


def check_encoding(encoding: str) -> str:
    """The name to show for `encoding` in messages. TextgenError (one line) for a name Python
    does not know, and for codecs that exist but do not turn bytes into text (rot13, base64,
    zlib, ...): every command that reads text checks its --encoding here."""
    try:
        canonical = codecs.lookup(encoding).name
    except (LookupError, TypeError, ValueError):
        raise TextgenError(
            f"unknown encoding {encoding!r}; pass an --encoding Python knows, "
            "such as utf-8, latin-1 or cp1252"
        ) from None
    try:
        b"a".decode(encoding)  # bytes.decode itself refuses codecs that are not text encodings
    except LookupError:
        raise TextgenError(f"{encoding!r} is not a text encoding; pass an --encoding such as utf-8, "
                           "latin-1 or cp1252") from None
    except (UnicodeError, ValueError):
        pass  # a text codec that cannot represent "a" (a strict multi-byte one): still text
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


def path_list(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """`paths` as a list of Paths (a single str or Path is one path)."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def corpus_files(paths: Sequence[str | Path] | str | Path) -> Iterator[tuple[Path, bool]]:
    """(file, named) for every file the corpus reading visits, in reading order.

    A file the user named comes as given (named True); a directory contributes its non-hidden
    files, sorted (named False). TextgenError for a path that does not exist.
    """
    for path in path_list(paths):
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
              progress: Callable[[int], object] | None = None,
              skipped: list[Path] | None = None) -> Iterator[str]:
    """Stream the text `read_corpus` returns in blocks (about `block_bytes` bytes of input each).

    The blocks join to exactly `read_corpus(paths, encoding)`, with the same rules and errors
    (a named binary or undecodable file is refused with its byte offset, such files inside a
    directory are skipped, an empty corpus is refused when the stream ends), but nothing is held
    whole. `progress(n)`, if given, is called with the number of bytes of each read; the files
    skipped are appended to `skipped`, if given, so that the caller can say so.
    """
    shown = check_encoding(encoding)
    paths = path_list(paths)
    tail = None  # last character streamed so far; None while the corpus has no text yet
    for file, named in corpus_files(paths):
        first = True
        for block in _file_text(file, encoding, shown, block_bytes, named, progress, skipped):
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


def file_texts(paths: Sequence[str | Path], encoding: str = "utf-8", block_bytes: int = 1 << 20,
               skipped: list[Path] | None = None) -> Iterator[tuple[Path, Iterator[str]]]:
    """(file, its text in blocks) for every file `iter_text` reads, one file at a time, with the
    same rules (a named binary or undecodable file is refused, such files inside a directory are
    skipped and appended to `skipped`); an empty corpus is not refused here. For scoring each
    file on its own (`textgen eval`)."""
    shown = check_encoding(encoding)
    for file, named in corpus_files(paths):
        yield file, _file_text(file, encoding, shown, block_bytes, named, None, skipped)


def _file_text(file: Path, encoding: str, shown: str, block_bytes: int, named: bool,
               progress: Callable[[int], object] | None,
               skipped: list[Path] | None = None) -> Iterator[str]:
    """Non-empty blocks of one file's text, as `iter_text` joins them.

    A named file's problems raise TextgenError. A file found in a directory that is unreadable,
    binary or undecodable yields nothing at all (and is appended to `skipped`, if given): one
    that fits in a block is checked whole before its block is yielded; a larger one is read
    through once first (without `progress`), so a problem deep inside it cannot cut it short
    after part of it was streamed.
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
        if skipped is not None:
            skipped.append(file)


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
