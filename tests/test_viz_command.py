"""`textgen viz`: the command end to end (html, json, npz), bad input, the page in a real headless
Chromium, and the "find the cell" proof: after a short training on a generated corpus with long
quoted spans, the page ranks a cell that follows "inside quotes" with |r| >= 0.8."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import (train_run, CHROMIUM, CHROMIUM_ARGS, SPAN_BOX, assert_card_beside, chinese_corpus,
                      chromium_env_without_cjk, describe, han_to_latin_width, invoke)

pytestmark = pytest.mark.usefixtures("own_cwd")



def quote_corpus(chars: int = 12_000, seed: int = 0) -> str:
    """Lines of lowercase words with one long quoted span of uppercase words each: only a cell
    that remembers being inside the quotes predicts the letter after a space. Tabs, Chinese
    and emoji ride along for the page's faithfulness checks."""
    rng = random.Random(seed)

    def word(letters):
        return "".join(rng.choice(letters) for _ in range(rng.randint(1, 5)))

    lines, n = [], 0
    while n < chars:
        words = [word("abcdefghijklm") for _ in range(rng.randint(2, 5))]
        quoted = " ".join(word("NOPQRSTUVWXYZ") for _ in range(rng.randint(2, 6)))
        extra = rng.choice(["", "", "\t", " 中文", " 🙂"])
        line = f'{" ".join(words)} "{quoted}" {" ".join(words[:2])}{extra}\n'
        lines.append(line)
        n += len(line)
    return "".join(lines)


@pytest.fixture(scope="module")
def quote_run(tmp_path_factory):
    """A 1 x 16 run trained for 60 steps on `quote_corpus`: (runs dir, corpus file)."""
    base = tmp_path_factory.mktemp("quotes")
    corpus = base / "quotes.txt"
    corpus.write_text(quote_corpus(), encoding="utf-8")
    train_run(base, corpus, "quotes", ["--units", "16", "--embedding-dim", "8", "--num-layers", "1",
                                       "--batch-size", "16", "--seq-len", "64", "--steps", "60",
                                       "--eval-every", "60", "--learning-rate", "0.02",
                                       "--warmup-steps", "0", "--quiet"])
    return base / "runs", corpus


def page_header(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="header">(.*?)</script>', html, re.S)[1])


def inside_double_quotes(text: str) -> np.ndarray:
    """1 after an opening quote up to (not including) its closing one: the state after each character."""
    inside, marks = False, []
    for ch in text:
        inside = inside != (ch == '"')
        marks.append(float(inside))
    return np.array(marks)


def test_find_the_cell_ranks_a_quote_cell(quote_run):
    runs, corpus = quote_run
    result = invoke("viz", "quotes", corpus, "--runs-dir", runs, "--format", "npz", "--out", "t.npz",
                    "--max-chars", "4000")
    assert result.exit_code == 0, describe(result)
    trace = np.load("t.npz")
    header = json.loads(str(trace["header"]))
    best = header["cells"][0]
    assert best["feature"] == "inside double quotes" and abs(best["r"]) >= 0.8, header["cells"][:3]
    text = "".join(trace["chars"])
    values = trace[f"layer{best['layer']}_{best['quantity']}"][:, best["unit"]]
    assert np.corrcoef(inside_double_quotes(text), values)[0, 1] == pytest.approx(best["r"], abs=1e-6)


def test_page_in_headless_chromium(quote_run, tmp_path):
    from playwright.sync_api import sync_playwright  # the test extra; Chromium is Debian's
    runs, corpus = quote_run
    text = corpus.read_text(encoding="utf-8")[:1500]
    (tmp_path / "sample.txt").write_text(text, encoding="utf-8")
    result = invoke("viz", "quotes", "sample.txt", "--runs-dir", runs, "--out", "page.html")
    assert result.exit_code == 0, describe(result)
    assert result.stdout.strip() == "page.html"
    assert invoke("viz", "quotes", "sample.txt", "--runs-dir", runs, "--format", "npz").exit_code == 0
    trace, header = np.load("viz.npz"), page_header(tmp_path / "page.html")
    assert header["length"] == len(text) and header["bits"] == 8  # a short text keeps full precision
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((tmp_path / "page.html").as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        spans = page.eval_on_selector_all("#text span", "spans => spans.map(s => s.textContent)")
        assert "".join(spans) == text and len(spans) == len(text)  # tabs, newlines, 中文, 🙂 as they are
        colours = lambda: page.eval_on_selector_all("#text span", "s => s.map(x => x.style.backgroundColor)")
        surprisal_colours = colours()
        assert page.is_hidden("#layer") and page.is_hidden("#unit")  # nothing to choose for surprisal
        assert page.inner_text("#legend-high") == "\u2265 10 bits"  # the playground's scale too
        page.select_option("#quantity", "c")
        assert page.is_visible("#layer") and page.is_visible("#unit")
        page.fill("#unit", "3")
        unit3 = colours()
        page.fill("#unit", "4")
        unit4 = colours()
        assert unit3 != unit4 and unit3 != surprisal_colours
        assert len(set(unit4)) > 3
        # one convention on both pages: positive values red, negative blue
        looks = page.eval_on_selector_all("#text span", f"s => s.map({SPAN_BOX})")
        c4, scale = trace["layer0_c"][:, 4], header["c_scale"][0][4]
        strong = [t for t in range(len(text)) if abs(c4[t]) > 0.25 * scale]
        assert len(strong) > 20
        for t in strong:
            red, _, blue = looks[t][2]
            assert (red > blue) == (c4[t] > 0), (t, c4[t], looks[t])
        assert page.url.endswith("#q=c&layer=0&unit=4")  # the choice is kept in the URL
        page.click("h1")  # out of the unit box, where [ and ] are typed, not shortcuts
        page.keyboard.press("]")
        assert page.input_value("#unit") == "5" and colours() != unit4
        rows = "#cells tbody tr:not([hidden])"
        assert page.locator(rows).count() == len({cell["feature"] for cell in header["cells"]})
        page.click("#more-cells")
        assert page.locator(rows).count() == len(header["cells"])
        page.click("#more-cells")
        assert page.locator(rows).count() == len({cell["feature"] for cell in header["cells"]})
        page.click("#cells tbody tr:first-child")  # the best "find the cell" row colours by its cell
        best = header["cells"][0]
        assert page.input_value("#unit") == str(best["unit"])
        assert page.input_value("#quantity") == best["quantity"]
        t = text.index('"') + 3  # a character inside the first quoted span
        page.hover(f"#text span:nth-child({t + 1})")
        tooltip = page.inner_text("#tooltip")
        assert f"layer 0 · unit {best['unit']}" in tooltip and "next character" in tooltip
        assert_card_beside(page, "#tooltip", f"#text span:nth-child({t + 1})")
        c_step = 2 * header["c_scale"][0][best["unit"]] / 255
        for q, tolerance in (("f", 0.5 / 255), ("o", 0.5 / 255), ("c", 0.5 * c_step)):
            shown = float(page.inner_text(f'#tooltip td[data-q="{q}"]'))
            assert shown == pytest.approx(float(trace[f"layer0_{q}"][t, best["unit"]]), abs=tolerance + 5e-4)
        page.locator("#saturation figure:nth-child(2) circle").nth(3).dispatch_event("click")  # forget gate
        assert (page.input_value("#quantity"), page.input_value("#unit")) == ("f", "3")
        assert "layer 0 · unit 3" in page.inner_text("#tooltip")  # the card follows the chosen unit
        shown = float(page.inner_text('#tooltip td[data-q="f"]'))
        assert shown == pytest.approx(float(trace["layer0_f"][t, 3]), abs=0.5 / 255 + 5e-4)
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert errors == []
    assert (tmp_path / "page.png").stat().st_size > 10_000


def open_page(browser, path: Path, errors: list):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return page


def test_chinese_page_draws_han_glyphs_and_fits_its_features(chinese_run, tmp_path):
    from playwright.sync_api import sync_playwright
    text = chinese_corpus(1200, seed=5)
    (tmp_path / "han.txt").write_text(text, encoding="utf-8")
    result = invoke("viz", "han", "han.txt", "--runs-dir", chinese_run.parent, "--out", "han.html")
    assert result.exit_code == 0, describe(result)
    header = page_header(tmp_path / "han.html")
    features = {cell["feature"] for cell in header["cells"]}
    assert "word start" not in features  # no spaces between Chinese words
    assert {"inside \u300c\u300d", "inside \u300a\u300b", "after a full stop"} <= features
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_page(browser, tmp_path / "han.html", errors)
        assert page.is_hidden("#font-hint")  # tests/setup-browser.sh installed a CJK font
        assert han_to_latin_width(page, "#text") > 1.4  # drawn as a glyph, not as a box
        unfollowed = [cell for cell in header["cells"] if not cell["follows"]]
        shown = page.locator("#cells tbody tr.none").all_inner_texts()
        assert len(shown) == len(unfollowed) and all("no unit follows it" in row for row in shown)
        assert all(abs(cell["r"]) < 0.3 for cell in unfollowed)
        page.hover("#text span:nth-child(30)")
        assert_card_beside(page, "#tooltip", "#text span:nth-child(30)")
        browser.close()
        # a Chromium that sees no CJK font: the Han characters are boxes, and the page says why
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    env=chromium_env_without_cjk(tmp_path))
        page = open_page(browser, tmp_path / "han.html", errors)
        assert page.is_visible("#font-hint")
        hint = page.inner_text("#font-hint")
        assert "Noto Sans CJK" in hint and "apt install fonts-noto-cjk" in hint, hint
        assert "\u4e2d" in page.get_attribute("#font-hint", "data-missing")
        assert han_to_latin_width(page, "#text") < 1.2
        browser.close()
    assert errors == []


def test_json_and_npz_hold_the_same_trace(trained_run, corpus_file):
    runs = trained_run.parent
    for fmt in ("json", "npz"):
        result = invoke("viz", "tiny", corpus_file, "--runs-dir", runs, "--format", fmt, "--max-chars", "50",
                        "--top-k", "3")
        assert result.exit_code == 0, describe(result)
        assert result.stdout.strip() == f"viz.{fmt}"
        assert "cut to the first 50 characters" in result.stderr
    raw, arrays = json.loads(Path("viz.json").read_text()), np.load("viz.npz")
    assert raw["format"] == "textgen-trace" and raw["run"] == "tiny"
    assert raw["chars"] == "".join(arrays["chars"])
    assert len(raw["chars"]) == 50 and raw["surprisal"][-1] is None
    for name in "ifgoch":
        assert arrays[f"layer0_{name}"].shape == (50, 16) and arrays[f"layer0_{name}"].dtype == np.float32
        np.testing.assert_allclose(raw["layers"][0][name], arrays[f"layer0_{name}"], atol=1e-6)
    np.testing.assert_allclose(raw["top_probs"], arrays["top_probs"], atol=1e-6)
    assert raw["top_chars"][0] == [raw["vocab"][i] for i in arrays["top_ids"][0]]
    np.testing.assert_allclose(raw["surprisal"][:-1], arrays["surprisal"][:-1], atol=1e-6)


def test_a_single_argument_that_is_a_file_traces_it_with_the_latest_run(trained_run, corpus_file):
    result = invoke("viz", corpus_file, "--runs-dir", trained_run.parent, "--format", "npz",
                    "--max-chars", "30")
    assert result.exit_code == 0, describe(result)
    assert "".join(np.load("viz.npz")["chars"]) == corpus_file.read_text()[:30]


def test_standard_input_as_file(trained_run):
    result = invoke("viz", "tiny", "-", "--runs-dir", trained_run.parent, "--format", "npz",
                    input="the ~cat\n")
    assert result.exit_code == 0, describe(result)
    assert "".join(np.load("viz.npz")["chars"]) == "the cat\n"
    assert json.loads(str(np.load("viz.npz")["header"]))["source"] == "standard input"
    latin = invoke("viz", "tiny", "-", "--runs-dir", trained_run.parent, "--format", "npz",
                   "--encoding", "latin-1", input="the cat\xe9".encode("latin-1"))
    assert latin.exit_code == 0 and "'é' x1" in latin.stderr, describe(latin)
    bad = invoke("viz", "tiny", "-", "--runs-dir", trained_run.parent, input=b"the \xff cat")
    assert bad.exit_code == 2, describe(bad)
    assert bad.stderr.startswith("Error: standard input is not valid utf-8"), describe(bad)


def test_prime_and_seeded_sample(trained_run):
    runs = trained_run.parent
    texts = []
    for out in ("a.npz", "b.npz"):
        result = invoke("viz", "tiny", "--runs-dir", runs, "--prime", "the ", "--sample", "40", "--seed", "5",
                        "--format", "npz", "--out", out)
        assert result.exit_code == 0, describe(result)
        texts.append("".join(np.load(out)["chars"]))
    assert texts[0] == texts[1] and len(texts[0]) == 44 and texts[0].startswith("the ")
    assert "seed 5" in json.loads(str(np.load("a.npz")["header"]))["source"]
    result = invoke("viz", "tiny", "--runs-dir", runs, "--prime", "the mat", "--format", "npz")
    assert result.exit_code == 0 and "".join(np.load("viz.npz")["chars"]) == "the mat"


def test_out_of_vocabulary_characters_are_reported_and_skipped(trained_run):
    Path("odd.txt").write_text("the €cat ~sat~\n", encoding="utf-8")
    result = invoke("viz", "tiny", "odd.txt", "--runs-dir", trained_run.parent, "--format", "npz")
    assert result.exit_code == 0, describe(result)
    assert "skipped 3 characters not in the vocabulary: '~' x2 '€' x1" in result.stderr
    trace = np.load("viz.npz")
    assert "".join(trace["chars"]) == "the cat sat\n"
    assert dict(zip(trace["skipped_chars"], trace["skipped_counts"].tolist())) == {"~": 2, "€": 1}


def test_a_size_budget_lowers_precision_first_then_cuts_the_page(trained_run):
    """The page at full precision, then at budgets of 60% and 10% of that size (how well the
    arrays deflate depends on the model's numbers, so the budgets follow the first page)."""
    rng = random.Random(1)
    Path("random.txt").write_text("".join(rng.choice("the cat sat on\n") for _ in range(3000)))
    sizes = {}
    budgets = {"full": "1"}
    for name in ("full", "coarser", "cut"):
        budget = budgets[name]
        result = invoke("viz", "tiny", "random.txt", "--runs-dir", trained_run.parent,
                        "--out", f"{name}.html", "--max-mb", budget)
        assert result.exit_code == 0, describe(result)
        header, size = page_header(Path(f"{name}.html")), Path(f"{name}.html").stat().st_size
        assert size <= float(budget) * 1e6 and header["traced"] == 3000
        sizes[name] = (header["bits"], header["length"], size)
        cut = f"the page shows the first {header['length']:,} of 3,000 characters traced" in result.stderr
        assert cut == (header["length"] < 3000)
        if name == "full":
            budgets["coarser"], budgets["cut"] = f"{0.6 * size / 1e6:.6f}", f"{0.1 * size / 1e6:.6f}"
    assert sizes["full"][:2] == (8, 3000)
    assert sizes["coarser"][0] < 8 and sizes["coarser"][1] == 3000  # a coarser precision fits it all
    assert sizes["cut"][0] == 3 and sizes["cut"][1] < 3000  # the coarsest does not: the page is cut


@pytest.mark.parametrize("args, message", [
    (["nope", "--prime", "the"], "run"),
    (["tiny", "empty.txt"], "empty"),
    (["tiny", "--prime", "€€"], "nothing to trace"),
    (["tiny", "--prime", ""], "nothing to trace"),
    (["tiny"], "give a FILE, --prime TEXT or --sample N"),
    (["tiny", "missing.txt"], "file not found: missing.txt"),
    (["tiny", "empty.txt", "--prime", "the"], "not both"),
    (["tiny", "--prime", "the", "--out", "no/such/dir/v.html"], "directory no/such/dir does not exist"),
    (["tiny", "--prime", "the", "--out", "."], "is a directory"),
    (["tiny", "--prime", "the", "--out", "empty.txt/v.html"], "does not exist"),
    (["tiny", "--sample", "5", "--seed", "-1"], "--seed must be an integer from 0 to 2147483647, got -1"),
    (["tiny", "keep.html", "--out", "keep.html"], "is the text being traced"),
    (["tiny", "--prime", "the", "--max-mb", "nan"], "--max-mb must be a positive number"),
    (["tiny", "--prime", "the", "--max-mb", "inf"], "--max-mb must be a positive number"),
    (["tiny", "--sample", "5", "--temp", "nan"], "--temp must be 0"),
])
def test_bad_input_is_one_line_and_exit_2(trained_run, args, message):
    Path("empty.txt").write_text("")
    Path("keep.html").write_text("precious")
    result = invoke("viz", *args, "--runs-dir", trained_run.parent)
    assert result.exit_code == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], describe(result)
    assert "Traceback" not in result.output
    assert Path("keep.html").read_text() == "precious"
    assert not Path("viz.html").exists()


def test_a_failed_trace_leaves_an_existing_output_untouched(trained_run):
    Path("v.html").write_text("precious")
    result = invoke("viz", "tiny", "--prime", "€", "--runs-dir", trained_run.parent, "--out", "v.html")
    assert result.exit_code == 2 and Path("v.html").read_text() == "precious"


@pytest.mark.parametrize("cell", ["gru", "peephole"])
def test_the_page_shows_the_gates_each_cell_has_and_its_unit_weights(cell, corpus_file, tmp_path):
    """A gru and a peephole run: the dropdown offers the cell's own quantities, the saturation
    plots its sigmoid gates, the card its values and its per-unit weights (the peepholes, the
    GRU's b_h rows), equal to the trace and the model; the saved trace is version 2."""
    from playwright.sync_api import sync_playwright

    from textgen.cell import cell_kind
    from textgen.inference import load_run

    run = train_run(tmp_path, corpus_file, cell, ["--units", "16", "--embedding-dim", "8", "--num-layers", "1",
                                                  "--batch-size", "4", "--seq-len", "16", "--steps", "3",
                                                  "--eval-every", "3", "--quiet", "--cell", cell])
    kind, text = cell_kind(cell), "the cat sat on the mat\n"
    for out, fmt in (("page.html", "html"), ("trace.npz", "npz")):
        result = invoke("viz", run, "--runs-dir", run.parent, "--prime", text, "--format", fmt, "--out", out)
        assert result.exit_code == 0, describe(result)
    trace, header = np.load("trace.npz"), page_header(tmp_path / "page.html")
    saved = json.loads(str(trace["header"]))
    assert saved["version"] == 2 and saved["cell"] == cell and saved["quantities"] == list(kind.quantities)
    assert sorted(f for f in trace.files if f.startswith("layer0_")) == sorted(f"layer0_{q}" for q in kind.quantities)
    (name,) = kind.extra_weights
    weights = np.reshape(kind.extras(load_run(str(run), run.parent).model.lstm_layers[0].cell)[name], (-1, 16))
    unit, t = 5, 6
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = open_page(browser, tmp_path / "page.html", errors)
        options = page.eval_on_selector_all("#quantity option", "o => o.map(x => x.value)")
        assert options == ["surprisal", *kind.quantities]
        assert page.locator("#saturation figure").count() == len(kind.sigmoid_gates)
        page.select_option("#quantity", kind.sigmoid_gates[0])
        page.fill("#unit", str(unit))
        page.hover(f"#text span:nth-child({t + 1})")
        card = page.inner_text("#tooltip")
        for q in kind.quantities:
            shown = float(page.inner_text(f'#tooltip td[data-q="{q}"]'))
            scale = header["c_scale"][0][unit] if q == "c" else 1.0
            assert shown == pytest.approx(float(trace[f"layer0_{q}"][t, unit]), abs=2 * scale / 255 + 5e-4), q
        for row, label in enumerate(kind.extra_rows[name]):
            shown = re.search(rf"{name} .*?{label} (-?[\d.]+)", card)
            assert shown and float(shown[1]) == pytest.approx(float(weights[row, unit]), abs=1e-3), card
        browser.close()
    assert errors == []
