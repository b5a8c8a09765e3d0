"""Corpora larger than memory: encode the text once into a memory-mapped file of character ids.

`encode_corpus(paths, encoding, cache_root)` returns the corpus as a read-only `np.memmap` of
ids plus its sorted character list, so training never holds the text or the id array in memory:
`StreamBatcher` reads windows straight from the mapping. The design:

* The text is `corpus.iter_text`, which streams exactly what `read_corpus` returns (same files,
  order, skipping rules, BOM and CRLF handling, newlines between files, errors), in ~1 MiB blocks.
* Building takes two streaming passes in constant memory. Pass 1 marks the code points seen in
  a bool table of 0x110000 entries (1.1 MB), giving the characters in code-point order, i.e.
  `Vocabulary.from_text(text).chars`. Pass 2 encodes block by block through the vocabulary's
  lookup table and appends the ids, in the most compact dtype (uint8 up to 256 characters,
  uint16 up to 65536, else uint32), to a temporary file with plain writes: a writable mapping
  would leave dirty pages counted in the resident memory. Ids equal
  `Vocabulary(chars).encode(read_corpus(paths, encoding))`.
* Commit: the temporary file (unique: pid and random suffix) is fsynced and renamed to
  `ids.bin`, and only then `corpus.json` (format, version, encoding, dtype, num_chars, chars,
  fingerprint, counts, the files skipped in directories (so a reused cache can still name them), and `content_sha256`, the sha256 of the ids, which run.json records so that a
  resumed run notices a corpus whose text changed) is written atomically. `corpus.json` is the commit marker: it is removed before a
  rebuild replaces `ids.bin`, so a crash at any instant leaves either a valid cache or one that
  is rebuilt. Two processes building the same cache at once each write their own temporary file
  and rename identical contents into place, so both end with a valid cache.
* The cache lives in `<cache_root>/corpus-<key>`, key = 16 hex digits of the SHA-256 of the
  resolved source paths and the encoding. It is reused, without reading the text, while its
  fingerprint still matches: (resolved path, size, mtime_ns) of every file the reading visits,
  the encoding and the format version. A changed, added or removed file, or a missing, damaged
  or truncated cache, rebuilds it. An edit that keeps a file's size and mtime is not noticed.

`load_corpus` is what training calls: the built-in corpus when no path is given, the cache
under the runs directory, a progress bar while encoding, and the summary run.json keeps.
No TensorFlow here.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.atomic import atomic_write_text, fsync_path, temporary_file
from textgen.corpus import check_encoding, corpus_files, default_corpus, iter_text, path_list
from textgen.errors import TextgenError
from textgen.processes import process_alive
from textgen.vocab import Vocabulary

FORMAT = "textgen-corpus-cache"
VERSION = 4  # 2: corpus.json records the sha256 of the ids (the content fingerprint); 3: counts;
# 4: the files skipped in directories
SKIPPED_NAMES = 5  # skipped files named (the first ones in reading order); all are counted
IDS_FILE, META_FILE = "ids.bin", "corpus.json"
BLOCK_BYTES = 1 << 20  # bytes of source text read at a time
STALE_TEMP_SECONDS = 3600  # a dead build's temporary file this old is deleted

Progress = Callable[[int], object]


@dataclass
class EncodedCorpus:
    """A corpus encoded into a cache directory."""

    ids: np.ndarray  # read-only np.memmap of the character ids, shape (num_chars,)
    chars: list[str]  # distinct characters in code-point order; an id indexes this list
    counts: list[int]  # how often each of `chars` occurs
    num_chars: int  # characters in the corpus (len(ids))
    directory: Path  # the cache directory holding ids.bin and corpus.json
    rebuilt: bool  # True when this call built the cache, False when it reused it
    paths: list[str]  # resolved source paths
    fingerprint: str  # sha256 of the ids: changes whenever the text does
    skipped: dict  # files of the directories skipped as binary, undecodable or unreadable:
    # {"count": N, "names": [the first SKIPPED_NAMES]}; recorded when the cache is built

    def vocabulary(self) -> Vocabulary:
        """The corpus's vocabulary (the same as `Vocabulary.from_text` of its text)."""
        return Vocabulary(self.chars)

    def model_vocabulary(self, min_count: int = 1) -> tuple[Vocabulary, np.ndarray | None, dict]:
        """(the vocabulary a model of this corpus uses, the map from stored ids to its ids or None,
        a summary of what was folded). With `min_count` above 1, characters occurring fewer times
        fold into one unknown symbol (`Vocabulary.keeping`); the cache itself keeps them all."""
        if min_count <= 1:
            return self.vocabulary(), None, {}
        counts = np.asarray(self.counts)
        kept = [c for c, n in zip(self.chars, counts) if n >= min_count]
        vocab = Vocabulary.keeping(kept)
        remap = vocab.encode("".join(self.chars)).astype(np.int32)  # (stored vocab,) -> model ids
        rare = counts < min_count
        return vocab, remap, {"min_count": min_count, "rare_chars": int(rare.sum()),
                              "rare_occurrences": int(counts[rare].sum())}


def encode_corpus(paths: Sequence[str | Path], encoding: str, cache_root: str | Path,
                  progress: Progress | None = None,
                  block_bytes: int = BLOCK_BYTES) -> EncodedCorpus:
    """The corpus of `paths` as ids in a memory-mapped cache under `cache_root`, built if needed.

    `progress(n)` is called with the number of source bytes read, during a build only: each
    pass reads the corpus once, so a progress bar's total is 2 * `source_bytes(paths)`.
    Source problems raise the same one-line TextgenError as `read_corpus`; so does a cache that
    cannot be written (read-only directory, disk full).
    """
    encoding = _canonical(encoding)
    paths = path_list(paths)
    fingerprint = _fingerprint(paths, encoding)  # refuses missing paths first
    resolved = [str(Path(p).resolve()) for p in paths]
    key = hashlib.sha256(json.dumps([resolved, encoding]).encode()).hexdigest()[:16]
    directory = Path(cache_root) / f"corpus-{key}"
    meta = _read_meta(directory, fingerprint)
    rebuilt = meta is None
    if rebuilt:
        meta = _build(directory, paths, encoding, fingerprint, progress, block_bytes)
    ids = np.memmap(directory / IDS_FILE, dtype=meta["dtype"], mode="r",
                    shape=(meta["num_chars"],))  # (num_chars,), read-only
    return EncodedCorpus(ids, meta["chars"], meta["counts"], meta["num_chars"], directory, rebuilt,
                         resolved, meta["content_sha256"], meta["skipped"])


CACHE_DIR = ".corpus-cache"  # under the runs directory: encoded corpora, shared by runs


def load_corpus(paths: Sequence[str | Path], encoding: str, runs_root: str | Path,
                default_corpus_dir: str | Path, show_progress: bool = False) -> tuple[EncodedCorpus, dict]:
    """The corpus of `paths` (none: the built-in default corpus) encoded in the runs directory's
    cache, and the summary run.json records (paths, encoding, size, content fingerprint).

    A refused corpus leaves no empty directories behind; an encoding bar shows only while a
    cache is really built."""
    from textgen.bars import LazyBar

    check_encoding(encoding)
    default = not paths
    if default:
        paths = [default_corpus(default_corpus_dir)]
    cache_root = Path(runs_root) / CACHE_DIR
    created = [d for d in (Path(runs_root), cache_root) if not d.exists()]
    try:
        with LazyBar(show_progress, lambda: 2 * source_bytes(paths), "encoding the corpus",
                     unit="B") as bar:
            corpus = encode_corpus(paths, encoding, cache_root, progress=bar.update)
    except TextgenError:
        for directory in reversed(created):
            _remove_if_empty(directory)
        raise
    summary = {"default": default, "paths": [str(Path(p).resolve()) for p in paths],
               "encoding": encoding, "chars": corpus.num_chars, "fingerprint": corpus.fingerprint}
    if corpus.skipped["count"]:
        summary["skipped"] = corpus.skipped
    return corpus, summary


def source_bytes(paths: Sequence[str | Path]) -> int:
    """Total size in bytes of the files the corpus reading visits (for a progress bar)."""
    return sum(size or 0 for _, size, _ in _fingerprint(paths, "")["files"])


def dtype_for(num_distinct: int) -> np.dtype:
    """The most compact unsigned dtype holding ids 0..num_distinct-1."""
    return np.dtype("uint8" if num_distinct <= 256 else "uint16" if num_distinct <= 65536
                    else "uint32")


def _canonical(encoding: str) -> str:
    """Python's name for `encoding`; TextgenError if it is unknown."""
    check_encoding(encoding)
    return codecs.lookup(encoding).name


def _fingerprint(paths: Sequence[str | Path], encoding: str) -> dict:
    """What the cache's validity depends on: every visited file's identity, size and mtime."""
    files = []
    for file, _ in corpus_files(paths):
        try:
            st = file.stat()
            files.append([str(file.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(file), None, None])  # unreadable: the reading reports or skips it
    return {"version": VERSION, "encoding": encoding, "files": files}


def _read_meta(directory: Path, fingerprint: dict) -> dict | None:
    """The cache's metadata if the cache is complete and matches `fingerprint`, else None."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if not (isinstance(meta, dict) and meta.get("format") == FORMAT
                and meta.get("version") == VERSION and meta.get("fingerprint") == fingerprint):
            return None
        chars, num_chars = Vocabulary(meta["chars"]).chars, meta["num_chars"]
        skipped = meta["skipped"]
        if not (isinstance(skipped, dict) and type(skipped.get("count")) is int
                and isinstance(skipped.get("names"), list)
                and all(isinstance(n, str) for n in skipped["names"])):
            return None
        if not isinstance(meta["content_sha256"], str) or not (
                isinstance(meta["counts"], list) and len(meta["counts"]) == len(chars)
                and all(type(n) is int and n > 0 for n in meta["counts"])):
            return None
        if meta["dtype"] != dtype_for(len(chars)).name or type(num_chars) is not int:
            return None
        size = (directory / IDS_FILE).stat().st_size
        if num_chars < 1 or size != num_chars * np.dtype(meta["dtype"]).itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError, TextgenError):
        return None  # missing, unreadable or malformed: rebuild
    return meta


def _build(directory: Path, paths: list, encoding: str, fingerprint: dict,
           progress: Progress | None, block_bytes: int) -> dict:
    """Encode the corpus into `directory` (two passes, atomic commit); returns its metadata."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(directory)
        fd, tmp = temporary_file(directory, f".{IDS_FILE}.{os.getpid()}.")
    except OSError as e:
        raise _unwritable(directory, e) from None
    try:
        with os.fdopen(fd, "wb") as out:
            chars, num_chars, skipped = _scan(paths, encoding, block_bytes, progress)
            dtype = dtype_for(len(chars))
            written, content, counts = _write_ids(out, paths, encoding, Vocabulary(chars), dtype,
                                                  block_bytes, progress)
        fsync_path(tmp)
        if written != num_chars or _fingerprint(paths, encoding) != fingerprint:
            raise _changed(paths)
        meta = {"format": FORMAT, "version": VERSION, "encoding": encoding, "dtype": dtype.name,
                "num_chars": num_chars, "chars": chars, "fingerprint": fingerprint,
                "content_sha256": content, "counts": counts,
                "skipped": {"count": len(skipped), "names": [str(f) for f in skipped[:SKIPPED_NAMES]]}}
        (directory / META_FILE).unlink(missing_ok=True)  # uncommit before replacing ids.bin
        os.replace(tmp, directory / IDS_FILE)
        atomic_write_text(directory / META_FILE, json.dumps(meta))  # commit
        return meta
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _remove_if_empty(directory)  # a source error leaves no empty cache directory behind
        if isinstance(e, OSError):  # reading problems are TextgenErrors: this is the cache
            raise _unwritable(directory, e) from None
        raise


def _scan(paths: list, encoding: str, block_bytes: int,
          progress: Progress | None) -> tuple[list[str], int, list[Path]]:
    """Pass 1: (distinct characters in code-point order, number of characters, the files of
    directories skipped as binary, undecodable or unreadable)."""
    count, skipped = 0, []

    def counted(blocks):
        nonlocal count
        for block in blocks:
            count += len(block)
            yield block

    vocab = Vocabulary.from_blocks(counted(iter_text(paths, encoding, block_bytes, progress, skipped)))
    return vocab.chars, count, skipped


def _write_ids(out, paths: list, encoding: str, vocab: Vocabulary, dtype: np.dtype,
               block_bytes: int, progress: Progress | None) -> tuple[int, str, list[int]]:
    """Pass 2: append the ids of each block to `out`; returns (how many were written, the
    sha256 of the ids written: the content fingerprint, how often each character occurs)."""
    written, content = 0, hashlib.sha256()
    counts = np.zeros(vocab.size, np.int64)  # (vocab,)
    for block in iter_text(paths, encoding, block_bytes, progress):
        try:
            ids = vocab.encode(block)  # (len(block),) uint16 or int32, ids < vocab.size
        except TextgenError:  # a character pass 1 did not see: the corpus changed meanwhile
            raise _changed(paths) from None
        data = ids.astype(dtype, copy=False).data
        out.write(data)
        content.update(data)
        counts += np.bincount(ids, minlength=vocab.size)
        written += len(ids)
    return written, content.hexdigest(), counts.tolist()


def _remove_stale_temps(directory: Path) -> None:
    """Delete temporary id files of builds that died (killed mid-build) over an hour ago.

    A temporary file is `.ids.bin.<pid>.<random>.tmp`; it is stale when no process has that
    pid any more and it has not been written for STALE_TEMP_SECONDS (the age guards against a
    live build in another pid namespace sharing the directory).
    """
    for tmp in directory.glob(f".{IDS_FILE}.*.tmp"):
        try:
            if (time.time() - tmp.stat().st_mtime >= STALE_TEMP_SECONDS
                    and process_alive(int(tmp.name.split(".")[3])) is False):
                tmp.unlink(missing_ok=True)
        except (ValueError, IndexError, OSError):
            pass  # not named by us, or gone already


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (another build's files), or already gone


def _changed(paths: list) -> TextgenError:
    names = ", ".join(str(p) for p in paths)
    return TextgenError(f"the corpus changed while it was being encoded ({names}); "
                        "run again once it has stopped changing")


def _unwritable(directory: Path, error: OSError) -> TextgenError:
    full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    fix = "free some disk space" if full else "make it writable"
    return TextgenError(f"cannot write the corpus cache {directory}: {error.strerror}; "
                        f"{fix} or choose another --runs-dir")
