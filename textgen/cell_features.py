"""Find the cell: simple features of a text, and the units whose state follows them.

Karpathy, Johnson & Fei-Fei (2015) found LSTM cells that track quotes, brackets, the position in
the line and indentation. Here each feature is a number per character, the state of the text
*after* reading that character (as the cell state is), and every unit's C and h are ranked by
their Pearson correlation with it. numpy only.

The features fit the script: "word start" only where words are separated by spaces (not in a
text written mostly in Chinese, Japanese or Thai); the CJK quotes 《》「」『』 and full-width
brackets count; "after a full stop" and "position in sentence" read 。！？ as well as .!?.
A feature whose best unit correlates less than `MIN_R` is reported as followed by no unit.

    features = text_features('say "hi" (twice)')
    features["inside double quotes"]   # 0 0 0 0 1 1 1 0 0 ...
"""

from __future__ import annotations

import re

import numpy as np

FEATURES = {
    "inside double quotes": 'after an opening " and before its closing one (backslash escapes skipped)',
    "inside single quotes": "after an opening ' (not an apostrophe inside a word) and before its closing one",
    "inside curly quotes": "between \u201c and \u201d, or \u2018 and \u2019",
    "inside \u300a\u300b": "inside a book title \u300a\u2026\u300b (or \u3008\u2026\u3009)",
    "inside \u300c\u300d": "inside CJK quotes \u300c\u2026\u300d or \u300e\u2026\u300f",
    "bracket depth": "how many (, [, {, \uff08, \u3010 and other brackets are open",
    "inside brackets": "at least one bracket is open",
    "position in line": "characters since the last newline",
    "position in sentence": "characters since the last full stop (. ! ? \u3002 \uff01 \uff1f) or newline",
    "after a full stop": "the character is a full stop: . ! ? \u3002 \uff01 \uff1f",
    "indentation": "leading spaces and tabs of the current line read so far",
    "word start": "a letter, digit or _ after a character that is none of these (scripts with spaces only)",
    "digit": "the character is a digit",
    "inside a comment": "from # or // to the end of the line, or inside /* */, outside quotes",
}
MIN_R = 0.3  # below this |r| no unit is said to follow a feature
OPEN, CLOSE = "([{\uff08\uff3b\uff5b\u3010\u3014\u3016", ")]}\uff09\uff3d\uff5d\u3011\u3015\u3017"
PAIRS = {  # feature: (openers, closers) of the spans it marks, nested spans counted
    "inside curly quotes": ("\u201c\u2018", "\u201d\u2019"),
    "inside \u300a\u300b": ("\u300a\u3008", "\u300b\u3009"),
    "inside \u300c\u300d": ("\u300c\u300e", "\u300d\u300f"),
}
FULL_STOPS = ".!?\u3002\uff01\uff1f"
# scripts written without spaces between words: Han, kana, Thai, Lao, Khmer, Myanmar
UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff"
                      "\u1000-\u109f\u1780-\u17ff\U00020000-\U0003134f]")


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def uses_spaces(text: str) -> bool:
    """Whether `text` is written mostly in scripts that put spaces between words: fewer than half
    of its letters are Han, kana, Thai, Lao, Khmer or Myanmar."""
    letters = sum(ch.isalpha() for ch in text)
    return len(UNSPACED.findall(text)) * 2 < letters or letters == 0


def paired_spans(text: str, opening: str, closing: str) -> np.ndarray:
    """How many spans from `opening` to `closing` characters are open after each character, (time,)."""
    depth, out = 0, np.zeros(len(text))
    for t, ch in enumerate(text):
        depth = depth + 1 if ch in opening else max(0, depth - 1) if ch in closing else depth
        out[t] = depth
    return out


def text_features(text: str) -> dict[str, np.ndarray]:
    """The features of `FEATURES` that fit the text's script ("word start" only where words are
    separated by spaces), for every character of `text`: {name: (time,) float64}."""
    n = len(text)
    out = {name: np.zeros(n) for name in FEATURES}
    for name, (opening, closing) in PAIRS.items():
        out[name] = (paired_spans(text, opening, closing) > 0).astype(np.float64)
    since_stop = 0
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
        since_stop = 0 if ch in FULL_STOPS or ch == "\n" else since_stop + 1
        out["position in sentence"][t] = since_stop
        out["after a full stop"][t] = ch in FULL_STOPS
        out["indentation"][t] = indent
        out["word start"][t] = _is_word(ch) and not _is_word(previous)
        out["digit"][t] = ch.isdigit()
        out["inside a comment"][t] = out["inside a comment"][t] or comment is not None
        previous = ch
    if not uses_spaces(text):
        del out["word start"]
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

    layers: per layer {"c": (time, units), "h": ...} (a `Trace`'s layers); `quantities`: those
    ranked, the cell's states (`CellKind.state_names`; the GRU has h alone). Returns dicts
    {"feature", "layer", "unit", "quantity", "r", "follows"}, the best `per_feature` of each
    feature by |r|, features ordered by their best |r|, strongest first. `follows` is |r| >=
    `MIN_R`: a followed feature lists only cells that follow it, one that no unit follows only its
    best cell, for the pages to say so.
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
        # the cells that follow it; if none does, its best one alone, to say so
        kept = [c for c in candidates[:per_feature] if abs(c[3]) >= MIN_R] or candidates[:1]
        ranked.append([{"feature": name, "layer": depth, "unit": unit, "quantity": quantity, "r": r,
                        "follows": abs(r) >= MIN_R} for depth, unit, quantity, r in kept])
    ranked.sort(key=lambda cells: -abs(cells[0]["r"]))
    return [cell for cells in ranked for cell in cells]
