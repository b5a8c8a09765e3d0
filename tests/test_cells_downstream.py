"""Every cell downstream of training, on a tiny 1-layer run of each cell (`textgen train --cell X`):

- export: SavedModel, LiteRT, ONNX and Keras, each passing its own check (`textgen export` runs
  the format's runtime on held-out characters and refuses logits more than 1e-4 from textgen's);
  the SavedModel's example script, in a process without textgen, writes `textgen sample --temp
  0`'s text for every cell;
- serve: one real server on 127.0.0.1 serving all the runs, batched, answers greedy completions
  equal to `textgen sample --temp 0`'s text for each, traces each run by its cell's own
  quantities (`POST /v1/trace`), and the playground offers each run's cell's quantities.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import httpx
from conftest import CHROMIUM, CHROMIUM_ARGS, TINY, describe, invoke, train_run
from serve_process import Server

from textgen.cell import cell_kind
from textgen.config import CELL_NAMES, EXPERIMENT_CELLS

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("export_probe.py")
FORMATS = ("savedmodel", "litert", "onnx", "keras")
PRIME, LENGTH = "the ", 40
PRODUCT_CELLS = tuple(cell for cell in CELL_NAMES if cell not in EXPERIMENT_CELLS)


@pytest.fixture(scope="module")
def cell_runs(tmp_path_factory, corpus_file) -> dict:
    """{cell: run directory}: conftest's TINY shape (1 layer of 16), 3 steps, one run per cell."""
    base = tmp_path_factory.mktemp("cell-runs")
    return {cell: train_run(base, corpus_file, cell, TINY + ["--cell", cell]) for cell in PRODUCT_CELLS}


@pytest.mark.parametrize("export_format", FORMATS)
@pytest.mark.parametrize("cell", PRODUCT_CELLS)
def test_each_cell_exports_in_each_format_and_passes_its_check(cell, export_format, cell_runs, tmp_path):
    run = cell_runs[cell]
    result = invoke("export", run, "--runs-dir", run.parent, "--format", export_format, "--out", tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    checked = re.search(r"checked with [^:]+: logits within (\S+) of textgen's", result.output)
    assert checked and float(checked.group(1)) <= 1e-4, result.output
    manifest = json.loads((tmp_path / "out" / "export.json").read_text(encoding="utf-8"))
    assert manifest["export_format"] == export_format


@pytest.mark.parametrize("cell", PRODUCT_CELLS)
def test_the_savedmodel_of_each_cell_writes_sample_greedy_text(cell, cell_runs, corpus_file, tmp_path):
    run = cell_runs[cell]
    result = invoke("export", run, "--runs-dir", run.parent, "--format", "savedmodel", "--out", tmp_path / "sm")
    assert result.exit_code == 0, describe(result)
    sample = invoke("sample", run, "--runs-dir", run.parent, "--temp", "0", "--prime", PRIME, "--length", LENGTH)
    assert sample.exit_code == 0, describe(sample)
    text = tmp_path / "text.txt"
    text.write_text("the mat", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no textgen there
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    probe = subprocess.run([sys.executable, str(PROBE), str(ROOT / "examples" / "export_savedmodel.py"),
                            str(tmp_path / "sm"), str(text), PRIME, str(LENGTH), str(tmp_path)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    printed = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))["printed"]
    assert sample.stdout.startswith(PRIME) and len(sample.stdout) == len(PRIME) + LENGTH + 1
    assert printed == sample.stdout


def greedy_sample(run, prime: str, length: int) -> str:
    """`textgen sample RUN --temp 0 --prime PRIME --length LENGTH`'s text, prime included."""
    result = invoke("sample", run, "--runs-dir", run.parent, "--temp", "0", "--prime", prime, "--length", length)
    assert result.exit_code == 0, describe(result)
    return result.stdout.rstrip("\n")


def test_one_batched_server_answers_greedy_completions_for_every_cell(cell_runs):
    server = Server(*cell_runs.values(), "--max-batch", "4")
    try:
        url = server.wait_ready()
        assert url.startswith("http://127.0.0.1:")
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == list(cell_runs)
        assert [list(m["textgen"]["quantities"]) for m in models] == [list(cell_kind(c).quantities) for c in cell_runs]
        for cell, run in cell_runs.items():
            reply = httpx.post(f"{url}/v1/completions", timeout=120, json={
                "model": cell, "prompt": PRIME, "max_tokens": LENGTH, "temperature": 0, "n": 2})
            assert reply.status_code == 200, reply.text
            texts = [choice["text"] for choice in reply.json()["choices"]]
            assert texts == [greedy_sample(run, PRIME, LENGTH)[len(PRIME):]] * 2, cell
            kind = cell_kind(cell)
            traced = httpx.post(f"{url}/v1/trace", timeout=120, json={"model": cell, "text": "the cat"})
            assert traced.status_code == 200, traced.text
            assert traced.json()["quantity"] == kind.state_names[-1]  # C, or the GRU's h
            assert sorted(traced.json()["unit_values"]) == sorted(kind.quantities)
            gate = httpx.post(f"{url}/v1/trace", timeout=120,
                              json={"model": cell, "text": "the cat", "quantity": kind.sigmoid_gates[0]})
            assert gate.status_code == 200 and len(gate.json()["values"]) == len("the cat"), gate.text
        refused = httpx.post(f"{url}/v1/trace", timeout=60, json={"model": "gru", "text": "the", "quantity": "c"})
        assert refused.status_code == 400 and "the gru cell's" in refused.json()["error"]["message"]
        from playwright.sync_api import sync_playwright

        errors = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            for cell in cell_runs:
                page.select_option("#model", cell)
                options = page.eval_on_selector_all("#cell-quantity option", "o => o.map(x => x.value)")
                assert options == list(cell_kind(cell).quantities), cell
                assert page.input_value("#cell-quantity") == ("c" if "c" in options else "h")
            assert "1 \u00d7 16 gru" in page.text_content("#model-info")
            browser.close()
        assert errors == []
    finally:
        server.stop()
