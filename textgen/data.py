"""Sequence batching for truncated backpropagation through time.

`split_train_val` holds out the tail of the encoded corpus (as views), `make_batchers` gives the
training and validation windows of a run; `StreamBatcher` cuts ids,
in memory or memory-mapped (`textgen.corpus_cache`), into stateful (x, y) windows. TensorFlow is
imported lazily, only by `StreamBatcher.dataset`. Reading text is `textgen.corpus`.
"""

from __future__ import annotations

import mmap

import numpy as np

from textgen.errors import TextgenError

RELEASE_BYTES = 64 << 20  # window bytes read from a memory-mapped corpus between page releases
PREFETCH_WINDOWS = 2  # windows sliced ahead of the training step


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
    `remap`, if given, maps each stored id to the model's id as windows are cut (the corpus cache
    holds every character; `--min-count` folds the rare ones into the unknown symbol).
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, name: str = "training",
                 release_every: int | None = None, remap: np.ndarray | None = None):
        self._mapping = read_only_mapping(ids)  # before asarray, which drops the memmap class
        ids = np.asarray(ids)  # a memmap (or a view of one) becomes an ndarray view: no copy
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if batch_size < 1 or seq_len < 1:
            raise TextgenError(f"batch size and sequence length must be at least 1, "
                               f"got {batch_size} and {seq_len}")
        self.batch_size, self.seq_len, self.name = batch_size, seq_len, name
        self.remap = remap  # (stored id range,) int32: the model's id of each stored id, or None
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
        block = self._block(k)
        return block[:, :-1], block[:, 1:]  # x, y: (batch, seq_len) each

    def char_counts(self, vocab_size: int, chunk_ids: int = 1 << 22) -> np.ndarray:
        """How often each model id occurs in the streams: (vocab_size,) int64. Read about
        `chunk_ids` ids at a time, so a memory-mapped corpus is never copied whole."""
        stored = len(self.remap) if self.remap is not None else vocab_size
        counts = np.zeros(stored, np.int64)
        columns = max(1, chunk_ids // self.batch_size)
        for start in range(0, self.stream_len, columns):
            part = self.streams[:, start : start + columns]  # (batch, <= columns)
            counts += np.bincount(part.ravel(), minlength=stored)[:stored]
        if self._mapping is not None:
            _release_pages(self._mapping)
        if self.remap is not None:  # stored ids -> the model's ids (rare ones share one)
            counts = np.bincount(self.remap, weights=counts, minlength=vocab_size).astype(np.int64)
        return counts

    def _block(self, k: int) -> np.ndarray:
        """Window k and its one-step-ahead targets as one int32 copy, (batch, seq_len + 1);
        every `release_every` windows the mapping's pages are released once it is copied."""
        start = k * self.seq_len
        block = self.streams[:, start : start + self.seq_len + 1].astype(np.int32)
        if self.remap is not None:
            block = self.remap[block]
        if self._mapping is not None and (k + 1) % self.release_every == 0:
            _release_pages(self._mapping)
        return block

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
        batch, seq_len = self.batch_size, self.seq_len

        def cut(k):
            w = tf.numpy_function(lambda k: self._block(int(k)), [k], tf.int32, stateful=False)
            w.set_shape((batch, seq_len + 1))
            return w[:, :-1], w[:, 1:]  # x, y: (batch, seq_len) each

        windows = tf.data.Dataset.range(start_window, self.num_windows)
        # A fixed prefetch, autotuning off: a window is one cheap slice, so there is nothing to
        # tune, and tf.data's autotuning thread backs off up to ~10 s between rounds; dropping an
        # iterator mid-epoch (every run's end, every Ctrl-C) waited for that thread, stalling
        # the end of a 70-step run by 12 s in two runs of three (bench/RESULTS.md).
        options = tf.data.Options()
        options.autotune.enabled = False
        return windows.map(cut).prefetch(PREFETCH_WINDOWS).with_options(options)


def log_frequencies(counts: np.ndarray) -> np.ndarray:
    """Natural-log relative frequencies of `counts`, add-one smoothed (a character never seen
    still gets a small probability): the output bias that predicts the unigram distribution."""
    counts = np.asarray(counts, np.float64)
    return np.log((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)


def make_batchers(ids, batch_size: int, seq_len: int, val_fraction: float,
                  remap: np.ndarray | None = None) -> tuple[StreamBatcher, StreamBatcher]:
    """Training and validation windows of a corpus's ids (mapped through `remap`, if given); the
    validation slice gets as many streams as it can fill, up to batch_size, so a short held-out
    tail still validates."""
    train_ids, val_ids = split_train_val(ids, val_fraction)
    train_data = StreamBatcher(train_ids, batch_size, seq_len, remap=remap)
    if len(val_ids) < seq_len + 1:
        raise TextgenError(
            f"the validation slice is too short: {len(val_ids)} characters, need at least "
            f"{seq_len + 1}; raise --val-fraction, lower --seq-len or use a longer corpus"
        )
    batch = min(batch_size, len(val_ids) // (seq_len + 1))
    return train_data, StreamBatcher(val_ids, batch, seq_len, name="validation", remap=remap)


def read_only_mapping(ids) -> mmap.mmap | None:
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
