"""`textgen.cell_features`: the text features on hand-checked examples, Pearson correlation
against numpy's, and the ranking."""

from __future__ import annotations

import numpy as np
import pytest

from textgen.cell_features import FEATURES, MIN_R, correlations, rank_cells, text_features, uses_spaces


def marks(text: str, feature: str) -> str:
    return "".join(str(int(v)) for v in text_features(text)[feature])


def test_quotes_follow_the_state_after_each_character():
    assert marks('a "b\\"c" d', "inside double quotes") == "0011111000"  # \" does not close
    assert marks("it's 'x' y", "inside single quotes") == "0000011000"  # an apostrophe opens nothing
    assert marks("'ab\ncd'", "inside single quotes") == "1110000"  # a single quote ends with its line


def test_brackets_lines_words_digits_and_comments():
    text = "f(a[1], {b})\n  x = 42  # c(\ny"
    features = text_features(text)
    assert features["bracket depth"].tolist()[:12] == [0, 1, 1, 2, 2, 1, 1, 1, 2, 2, 1, 0]
    assert features["bracket depth"][-4:].tolist() == [0, 0, 0, 0]  # "(" inside a comment opens nothing
    assert (features["inside brackets"] == (features["bracket depth"] > 0)).all()
    assert features["position in line"][:14].tolist() == list(range(1, 13)) + [0, 1]
    assert features["indentation"][13:17].tolist() == [1, 2, 2, 2]
    assert marks(text, "word start") == "10101000010000010001000001001"
    assert marks(text, "digit") == "00001000000000000001100000000"
    assert marks(text, "inside a comment") == "00000000000000000000000111100"
    assert marks("a /* b */ c // d\ne", "inside a comment") == "000111111000011100"
    assert set(features) == set(FEATURES)


def test_correlations_equal_numpys_and_constant_columns_give_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    values = np.column_stack([rng.normal(size=(50, 4)), np.ones(50)])
    r = correlations(features, values)
    assert r.shape == (3, 5)
    expected = np.corrcoef(features.T, values[:, :4].T)[:3, 3:]
    np.testing.assert_allclose(r[:, :4], expected, atol=1e-12)
    assert (r[:, 4] == 0).all()
    np.testing.assert_allclose(correlations(features[:, 0], values)[:4], expected[0], atol=1e-12)


def test_rank_cells_orders_features_by_their_best_cell():
    text = 'ab "cd" ef "gh" ij\n' * 10
    quotes = text_features(text)["inside double quotes"]
    rng = np.random.default_rng(1)
    c = rng.normal(size=(len(text), 6))
    c[:, 4] = -3 * quotes + 0.01 * rng.normal(size=len(text))  # unit 4 follows the quotes
    ranked = rank_cells(text, [{"c": c, "h": np.tanh(c)}], per_feature=2)
    best = ranked[0]
    assert (best["feature"], best["unit"], best["layer"]) == ("inside double quotes", 4, 0)
    assert best["r"] == pytest.approx(-1, abs=0.01)
    assert [cell["feature"] for cell in ranked[:2]] == ["inside double quotes"] * 2
    assert "digit" not in {cell["feature"] for cell in ranked}  # no digits: the feature is constant
    best_r = [abs(ranked[k]["r"]) for k in range(0, len(ranked), 2)]
    assert best_r == sorted(best_r, reverse=True)


def test_chinese_text_gets_its_own_features_and_no_word_start():
    text = "他说：「你好。」《红楼梦》（一）\n她笑了！"
    features = text_features(text)
    assert "word start" not in features and "word start" in text_features("the cat sat")
    assert marks(text, "inside 「」") == "000111100000000000000"  # after 「 up to its 」
    assert marks(text, "inside 《》") == "000000001111000000000"
    assert marks(text, "inside brackets") == "000000000000011000000"  # full-width （ ）
    assert marks(text, "after a full stop") == "000000100000000000001"  # 。 and ！
    assert features["position in sentence"].tolist()[:8] == [1, 2, 3, 4, 5, 6, 0, 1]
    assert marks("“a ‘b’ c” d", "inside curly quotes") == "11111111000"
    assert uses_spaces("naïve café, 中文 inside")
    assert not uses_spaces("中文里夹着 a few words 的句子很长很长")


def test_a_feature_no_unit_follows_is_said_to_be_followed_by_none():
    text = 'ab "cd" ef "gh" ij\n' * 10
    quotes = text_features(text)["inside double quotes"]
    rng = np.random.default_rng(2)
    c = rng.normal(size=(len(text), 6))
    c[:, 1] = quotes + 0.01 * rng.normal(size=len(text))  # unit 1 follows the quotes; nothing else does
    ranked = rank_cells(text, [{"c": c, "h": np.tanh(c)}], per_feature=3)
    followed = [cell for cell in ranked if cell["follows"]]
    assert {cell["feature"] for cell in followed} == {"inside double quotes"}
    assert all(abs(cell["r"]) >= MIN_R for cell in followed)
    weak = [cell for cell in ranked if not cell["follows"]]
    assert weak and all(abs(cell["r"]) < MIN_R for cell in weak)
    assert len(weak) == len({cell["feature"] for cell in weak})  # one entry each: its best |r|
    assert {cell["feature"] for cell in weak}.isdisjoint(cell["feature"] for cell in followed)
