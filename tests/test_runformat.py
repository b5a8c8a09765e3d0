"""The run format knows its version (textgen.runformat): an old run loads with the values it
had in effect, a current one round-trips, a newer one asks for an upgrade in every command that
reads a run, and damage in a current one is still called damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import describe, invoke

from textgen import runformat
from textgen.errors import TextgenError
from textgen.runs import read_run_meta

pytestmark = pytest.mark.usefixtures("own_cwd")

# What a run saved before these fields existed had in effect, written out here independently of
# runformat.ADDED: the first textgen trained in float32 at a constant learning rate (no warm-up,
# no decay), with one softmax and the output bias at zeros.
LEGACY = {"model": {"head_shortlist": 0},
          "train": {"head_bias": "zeros", "precision": "float32", "warmup_steps": 0, "lr_decay": "none"}}


def rewrite(run_dir: Path, change) -> dict:
    path = run_dir / runformat.RUN_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


def make_old(data: dict) -> None:
    """run.json as the first textgens wrote it: no version, none of the later fields."""
    data.pop("version")
    for section, fields in LEGACY.items():
        for name in fields:
            data[section].pop(name)


def make_future(data: dict) -> None:
    """run.json as a newer textgen might write it: a higher version and fields unknown here."""
    data["version"] = runformat.VERSION + 1
    data["model"]["layer_norm"] = True
    data["lineage"] = {"base": "elsewhere", "step": 3}


def one_error_line(result) -> str:
    """Exit code 2 and exactly one `Error: ...` line, no traceback; returns the line."""
    info = describe(result)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), info
    assert "Traceback" not in result.stdout + result.stderr, info
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), info
    return lines[0]


# ---------------------------------------------------------------------------- old runs


def test_an_old_run_loads_with_the_values_it_had_in_effect(copy_run):
    run_dir = copy_run()
    rewrite(run_dir, make_old)
    meta = read_run_meta(run_dir)
    for section, fields in LEGACY.items():
        for name, value in fields.items():
            assert getattr(meta[section], name) == value, (section, name)

    info = invoke("info", run_dir)
    assert info.exit_code == 0, describe(info)
    assert "one softmax" in info.stdout and "head bias zeros" in info.stdout
    assert "precision float32" in info.stdout
    sample = invoke("sample", run_dir, "--length", 5, "--seed", 1)
    assert sample.exit_code == 0, describe(sample)
    assert len(sample.stdout) == 6


def test_an_old_run_resumed_is_written_back_in_the_current_format(copy_run):
    """Resuming migrates for good: run.json carries the current version and the old values
    (not today's defaults), and then reads as a current run."""
    run_dir = copy_run()
    rewrite(run_dir, make_old)
    result = invoke("train", "--resume", "--name", run_dir.name, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--quiet")
    assert result.exit_code == 0, describe(result)
    data = json.loads((run_dir / runformat.RUN_FILE).read_text(encoding="utf-8"))
    assert data["version"] == runformat.VERSION and data["step"] == 6
    for section, fields in LEGACY.items():
        for name, value in fields.items():
            assert data[section][name] == value, (section, name)


# ---------------------------------------------------------------------------- current runs


def test_a_current_run_round_trips(trained_run):
    raw = json.loads((trained_run / runformat.RUN_FILE).read_text(encoding="utf-8"))
    assert raw["format"] == runformat.FORMAT and raw["version"] == runformat.VERSION
    assert runformat.meta_to_json(read_run_meta(trained_run)) == raw


def test_resume_arrays_are_named_as_runs_have_always_named_them(trained_run):
    """resume.npz of a run written today holds the optimizer's variables and the carried
    (h, c) of each layer under the names every earlier textgen wrote: opt_<i>, carry_<i>."""
    meta = read_run_meta(trained_run)
    with np.load(trained_run / meta["checkpoints"]["last"] / runformat.RESUME_FILE) as data:
        keys = set(data.files)
    carried = {runformat.carry_key(i) for i in range(2 * meta["model"].num_layers)}
    assert carried == {f"carry_{i}" for i in range(2 * meta["model"].num_layers)}
    optimizer = keys - carried
    assert optimizer == {runformat.optimizer_key(i) for i in range(len(optimizer))}
    assert runformat.optimizer_key(0) == "opt_0" and len(optimizer) > 2


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["model"].update(units="many"), "ModelConfig.units"),
    (lambda d: d.update(lineage={"base": "x"}), "unknown field(s) 'lineage'"),
    (lambda d: d["model"].update(layer_norm=True), "unknown field(s): 'layer_norm'"),
    (lambda d: d["model"].update(cell="rnn"), "model.cell is not one of lstm, peephole"),
    (lambda d: d["corpus"].update(sources=2), "corpus has unknown field(s) 'sources'"),
    (lambda d: d["corpus"].update(skipped={"count": "2", "names": []}), "corpus.skipped"),
    (lambda d: d.update(version="2"), "version is not a format number"),
    (lambda d: d.update(version=0), "version is not a format number"),
], ids=["units-as-string", "unknown-top-field", "unknown-model-field", "unknown-cell", "unknown-corpus-field",
        "skipped-count-as-string", "version-as-string", "version-zero"])
@pytest.mark.parametrize("command", ["info", "sample"])
def test_damage_in_a_current_run_is_still_damage(command, change, fragment, copy_run):
    run_dir = copy_run()
    rewrite(run_dir, change)
    line = one_error_line(invoke(command, run_dir, *(["--length", 5] if command == "sample" else [])))
    assert "run.json is damaged" in line and fragment in line, line
    assert "newer textgen" not in line


def test_skipped_files_are_a_field_of_the_current_format(copy_run):
    """Issue 25's summary of skipped undecodable files validates when written."""
    run_dir = copy_run()
    skipped = {"count": 3, "names": ["a.bin", "b.bin"]}
    rewrite(run_dir, lambda d: d["corpus"].update(skipped=skipped))
    assert read_run_meta(run_dir)["corpus"]["skipped"] == skipped
    assert invoke("info", run_dir).exit_code == 0


def test_a_field_newer_than_the_runs_own_format_is_damage(copy_run, monkeypatch):
    """Adding a field is one table entry: with `corpus.skipped` moved to the next format (VERSION
    follows), a run of today's format that carries it is damaged, one that lacks it loads."""
    run_dir = copy_run()
    today = runformat.VERSION
    monkeypatch.setitem(runformat.ADDED, "corpus.skipped", runformat.Added(runformat.ABSENT, version=today + 1))
    monkeypatch.setattr(runformat, "VERSION", today + 1)
    assert read_run_meta(run_dir)["version"] == today
    rewrite(run_dir, lambda d: d["corpus"].update(skipped={"count": 1, "names": ["a"]}))
    with pytest.raises(TextgenError, match=rf"damaged \(corpus.skipped is newer than the run's format {today}\)"):
        read_run_meta(run_dir)


def test_a_format_1_run_with_a_lineage_is_damage_and_a_damaged_lineage_is_named(copy_run):
    """`init_from` (a fine-tuned run's lineage) came with format 2: a format-1 run carrying it is
    damaged; a lineage missing a field or with a wrong one is named in one line."""
    run_dir = copy_run()
    lineage = {"run": "/runs/base", "name": "base", "checkpoint": "ckpt-00000006", "step": 6}
    rewrite(run_dir, lambda d: d.update(init_from=lineage))
    assert read_run_meta(run_dir)["init_from"] == lineage
    rewrite(run_dir, lambda d: d.update(version=1))
    with pytest.raises(TextgenError, match=r"damaged \(init_from is newer than the run's format 1\)"):
        read_run_meta(run_dir)
    rewrite(run_dir, lambda d: d.update(version=2, init_from={**lineage, "step": -1}))
    with pytest.raises(TextgenError, match=r"damaged \(init_from.step is not a step number\)"):
        read_run_meta(run_dir)
    rewrite(run_dir, lambda d: d["init_from"].pop("checkpoint"))
    with pytest.raises(TextgenError, match=r"damaged \(init_from has no checkpoint\)"):
        read_run_meta(run_dir)


# ---------------------------------------------------------------------------- future runs

READERS = {
    "info": ["info", "RUN"],
    "sample": ["sample", "RUN", "--length", "5"],
    "eval": ["eval", "RUN", "CORPUS", "--quiet"],
    "train --resume": ["train", "--resume", "--name", "NAME", "--steps", "6", "--quiet"],
    "viz": ["viz", "RUN", "CORPUS", "--format", "npz", "--out", "OUT"],
    "export": ["export", "RUN", "--format", "keras", "--out", "OUT"],
    "serve": ["serve", "RUN", "--port", "0", "--max-batch", "1"],
}


@pytest.mark.parametrize("command", list(READERS))
def test_a_run_from_a_newer_textgen_asks_for_an_upgrade(command, copy_run, corpus_file, tmp_path,
                                                        monkeypatch):
    from textgen.serve import command as serve_command

    class NoServer:  # were the run read, the server would start: stand in for uvicorn
        def __init__(self, *args, **kwargs):
            pass

        def run(self, sockets=None):
            pass

    monkeypatch.setattr(serve_command.uvicorn, "Config", NoServer)
    monkeypatch.setattr(serve_command, "GracefulServer", NoServer)
    run_dir = copy_run()
    rewrite(run_dir, make_future)
    before = (run_dir / runformat.RUN_FILE).read_bytes()
    stand_in = {"RUN": run_dir, "NAME": run_dir.name, "CORPUS": corpus_file, "OUT": tmp_path / "out"}
    args = [stand_in.get(a, a) for a in READERS[command]] + ["--runs-dir", run_dir.parent]
    line = one_error_line(invoke(*args))
    version = runformat.VERSION + 1
    assert f"this run was written by a newer textgen (format {version}); upgrade textgen" in line, line
    assert "damaged" not in line
    assert (run_dir / runformat.RUN_FILE).read_bytes() == before
    assert not (tmp_path / "out").exists()
