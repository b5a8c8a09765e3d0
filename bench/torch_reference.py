"""The plain PyTorch reference for bench/quality.py: nn.Embedding -> nn.LSTM -> nn.Linear, Adam
with a constant learning rate, global-norm clipping, truncated BPTT over contiguous streams,
trained for a time budget on the first 90% of a corpus, scored on the last 10%.

It mirrors what a user writes from the PyTorch tutorials, and what `textgen train` does, so the
two are scored alike: the vocabulary is every character of the whole file (as textgen's is);
the text is laid out as `batch` contiguous streams cut into windows of `seq_len`, the state
carried from window to window; every `eval_every` steps the first `eval_batches` held-out windows
are scored and the best weights kept (as textgen keeps its best checkpoint); the final figure is
the bits per character of the best weights over the whole held-out text as one stream, state
carried, in windows of 256 (as `textgen eval` scores it).

    python bench/torch_reference.py CORPUS --minutes 5 [--units 256 --layers 2 ...]

Prints one line: `reference bpc <value> steps <n> chars_per_sec <rate>`.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--clip-norm", type=float, default=5.0)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    text = args.corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    n_train = len(ids) - int(len(ids) * 0.1)
    train, held_out = ids[:n_train], ids[n_train:]

    def streams(data, batch):
        length = len(data) // batch
        return torch.from_numpy(data[: batch * length].reshape(batch, length))

    train_streams = streams(train, args.batch_size)  # (batch, stream_len)
    windows = (train_streams.shape[1] - 1) // args.seq_len
    val_batch = min(args.batch_size, len(held_out) // (args.seq_len + 1))
    val_streams = streams(held_out, val_batch)

    class CharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(len(chars), args.embedding_dim)
            self.lstm = nn.LSTM(args.embedding_dim, args.units, num_layers=args.layers, batch_first=True)
            self.head = nn.Linear(args.units, len(chars))

        def forward(self, x, state):
            out, state = self.lstm(self.embedding(x), state)
            return self.head(out), state

    model = CharLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

    def zeros(batch):
        z = torch.zeros(args.layers, batch, args.units)
        return z, z.clone()

    @torch.no_grad()
    def validate():
        model.eval()
        state, total, count = zeros(val_batch), 0.0, 0
        for k in range(min(args.eval_batches, (val_streams.shape[1] - 1) // args.seq_len)):
            block = val_streams[:, k * args.seq_len: (k + 1) * args.seq_len + 1]
            logits, state = model(block[:, :-1], state)
            total += nn.functional.cross_entropy(logits.reshape(-1, len(chars)), block[:, 1:].reshape(-1)).item()
            count += 1
        model.train()
        return total / count / math.log(2)

    best, best_state, step, window = math.inf, None, 0, 0
    state = zeros(args.batch_size)
    start = time.monotonic()
    while time.monotonic() - start < 60 * args.minutes:
        if window == windows:
            window, state = 0, zeros(args.batch_size)
        block = train_streams[:, window * args.seq_len: (window + 1) * args.seq_len + 1]
        optimizer.zero_grad(set_to_none=True)
        logits, (h, c) = model(block[:, :-1], state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), block[:, 1:].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        optimizer.step()
        state = (h.detach(), c.detach())
        step, window = step + 1, window + 1
        if step % args.eval_every == 0:
            bpc = validate()
            if bpc < best:
                best, best_state = bpc, copy.deepcopy(model.state_dict())
    trained_seconds = time.monotonic() - start
    bpc = validate()
    if bpc < best:
        best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    print(f"reference bpc {score(model, held_out, zeros, len(chars)):.4f} steps {step} "
          f"chars_per_sec {step * args.batch_size * args.seq_len / trained_seconds:.0f}")
    return 0


def score(model, held_out, zeros, vocab: int, window: int = 256) -> float:
    """Bits per character over the held-out text as one stream, state carried (textgen eval's way)."""
    import torch

    model.eval()
    data = torch.from_numpy(held_out)[None, :]  # (1, n)
    state, nats = zeros(1), 0.0
    with torch.no_grad():
        for start in range(0, data.shape[1] - 1, window):
            block = data[:, start: start + window + 1]
            logits, state = model(block[:, :-1], state)
            nats += torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), block[:, 1:].reshape(-1),
                                                      reduction="sum").item()
    return nats / (data.shape[1] - 1) / math.log(2)


if __name__ == "__main__":
    sys.exit(main())
