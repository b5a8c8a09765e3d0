"""Progress bars (tqdm) for the terminal: encoding a corpus, and training.

Both end their line when they close because of an error, so the one-line `Error: ...` that
follows starts a line of its own (tqdm's `leave=False` would only clear the bar with a carriage
return, and in a log file the error would share the bar's line).
"""

from __future__ import annotations

import math
from typing import Callable


class LazyBar:
    """A tqdm bar that appears only once there is progress to show (a corpus cache that is
    reused reports none, and then nothing is drawn), and disappears when the work is done.

    Args:
        show: whether to draw at all.
        total: called once, when the bar first appears, for its total.
        description: the bar's label.
        unit: what `update(n)` counts.

    Example:

        with LazyBar(True, lambda: size, "encoding the corpus", unit="B") as bar:
            work(progress=bar.update)
    """

    def __init__(self, show: bool, total: Callable[[], int], description: str, unit: str = "it"):
        self.show, self.total, self.description, self.unit = show, total, description, unit
        self.bar = None

    def update(self, n: int) -> None:
        if self.show and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total(), unit=self.unit, unit_scale=True, leave=False,
                            desc=self.description, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if self.bar is not None:
            self.bar.leave = kind is not None  # on an error, keep the line and end it
            self.bar.close()


class TrainingBar:
    """The training progress bar: steps, training and last validation bits per character (both
    in bits, so they compare at a glance), characters/s.

    A trainer hook (see `textgen.train`): the loop calls `on_steps` each time it reads the
    losses back, `on_validation` after each validation, and `close` at the end. `val_bpc`: the
    last validation before this session (a resumed run's), shown until the next one.
    """

    def __init__(self, total: int | None, initial: int, show: bool = True,
                 val_bpc: float | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not show, leave=True)
        self.val_bpc = val_bpc
        self.bpc: float | None = None
        self.chars_per_sec: float | None = None
        if val_bpc is not None:
            self._show(refresh=True)  # on screen before this session's first steps

    def on_steps(self, step: int, train_loss: float, chars_per_sec: float, learning_rate: float) -> None:
        self.bar.update(step - self.bar.n)
        self.bpc, self.chars_per_sec = train_loss / LN2, chars_per_sec  # nats -> bits
        self._show()

    def on_validation(self, step: int, val_bpc: float, trainer) -> None:
        self.val_bpc = val_bpc
        self._show()  # also what the bar's last line shows, when training ends here

    def _show(self, refresh: bool = False) -> None:
        # an ordered dict: tqdm sorts keyword postfixes by name
        speed = "-" if self.chars_per_sec is None else f"{self.chars_per_sec:,.0f}"
        self.bar.set_postfix({"bpc": _fmt(self.bpc), "val_bpc": _fmt(self.val_bpc), "chars_s": speed},
                             refresh=refresh)

    def close(self) -> None:
        self.bar.close()  # leave=True: the bar's line is ended with a newline


LN2 = math.log(2.0)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
