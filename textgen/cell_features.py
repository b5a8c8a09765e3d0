"""Find the cell: simple features of a text, and the units whose state follows them.

Karpathy, Johnson & Fei-Fei (2015) found LSTM cells that track quotes, brackets, the position in
the line and indentation. Here each feature is a number per character, the state of the text
*after* reading that character (as the cell state is), and every unit's C and h are ranked by
their Pearson correlation with it. numpy only.

    features = text_features('say "hi" (twice)')
    features["inside double quotes"]   # 0 0 0 0 1 1 1 0 0 ...
"""

from __future__ import annotations

import numpy as np

FEATURES = {
    "inside double quotes": 'after an opening " and before its closing one (backslash escapes skipped)',
    "inside single quotes": "after an opening ' (not an apostrophe inside a word) and before its closing one",
    "bracket depth": "how many (, [ and { are open",
    "inside brackets": "at least one (, [ or { is open",
    "position in line": "characters since the last newline",
    "indentation": "leading spaces and tabs of the current line read so far",
    "word start": "a letter, digit or _ after a character that is none of these",
    "digit": "the character is a digit",
    "inside a comment": "from # or // to the end of the line, or inside /* */, outside quotes",
}
OPEN, CLOSE = "([{", ")]}"


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def text_features(text: str) -> dict[str, np.ndarray]:
    """Each feature of `FEATURES` for every character of `text`: {name: (time,) float64}."""
    n = len(text)
    out = {name: np.zeros(n) for name in FEATURES}
    quote = None  # the quote character whose span we are in
    escaped = False
    depth, column, indent, at_indent = 0, 0, 0, True
    comment = None  # "line" or "block"
    previous = "\n"
    for t, ch in enumerate(text):
        if ch == "\n":
            column, indent, at_indent = 0, 0, True
            if comment == "line":
                comment = None
            if quote == "'":
                quote = None  # single-quoted strings end with their line
        else:
            column += 1
            at_indent = at_indent and ch in " \t"
            indent += at_indent
        if comment == "block":
            if previous == "*" and ch == "/":
                comment = None
                out["inside a comment"][t] = 1  # the closing / still belongs to the comment
        elif comment is None and quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif comment is None:
            if ch == '"' or (ch == "'" and not _is_word(previous)):
                quote = ch
            elif ch == "#" or (previous == "/" and ch in "/*"):
                comment = "block" if ch == "*" else "line"
            elif ch in OPEN:
                depth += 1
            elif ch in CLOSE:
                depth = max(0, depth - 1)
        out["inside double quotes"][t] = quote == '"'
        out["inside single quotes"][t] = quote == "'"
        out["bracket depth"][t] = depth
        out["inside brackets"][t] = depth > 0
        out["position in line"][t] = column
        out["indentation"][t] = indent
        out["word start"][t] = _is_word(ch) and not _is_word(previous)
        out["digit"][t] = ch.isdigit()
        out["inside a comment"][t] = out["inside a comment"][t] or comment is not None
        previous = ch
    return out


def correlations(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pearson correlation of each feature with each unit: features (time, n) or (time,),
    values (time, units) -> (n, units) or (units,). A constant column correlates 0."""
    f = np.asarray(features, np.float64)
    v = np.asarray(values, np.float64)
    f = f - f.mean(axis=0)
    v = v - v.mean(axis=0)
    denominator = np.sqrt(np.multiply.outer((f * f).sum(axis=0), (v * v).sum(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        # a contiguous (n, time) left operand: OpenBLAS is 30x slower on the transposed view
        r = (np.ascontiguousarray(f.T) @ v) / denominator
    return np.where(denominator > 0, r, 0.0)


def rank_cells(text: str, layers: list[dict[str, np.ndarray]], per_feature: int = 5,
               quantities: tuple[str, ...] = ("c", "h")) -> list[dict]:
    """The units most correlated with each feature of `text` that varies.

    layers: per layer {"c": (time, units), "h": ...} (a `Trace`'s layers). Returns dicts
    {"feature", "layer", "unit", "quantity", "r"}, the best `per_feature` of each feature by |r|,
    features ordered by their best |r|, strongest first.
    """
    varying = {name: f for name, f in text_features(text).items() if f.std() > 0}
    if not varying:
        return []
    features = np.stack(list(varying.values()), axis=1)  # (time, features)
    blocks = [(depth, quantity, correlations(features, layer[quantity]))  # (features, units) each
              for depth, layer in enumerate(layers) for quantity in quantities]
    ranked = []
    for k, name in enumerate(varying):
        candidates = [(depth, unit, quantity, float(r[k, unit]))
                      for depth, quantity, r in blocks for unit in range(r.shape[1])]
        candidates.sort(key=lambda c: -abs(c[3]))
        ranked.append([{"feature": name, "layer": depth, "unit": unit, "quantity": quantity, "r": r}
                       for depth, unit, quantity, r in candidates[:per_feature]])
    ranked.sort(key=lambda cells: -abs(cells[0]["r"]))
    return [cell for cells in ranked for cell in cells]
