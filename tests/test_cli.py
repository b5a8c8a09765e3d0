"""The `textgen` command line end to end: help, lazy TensorFlow import, train, sample, resume,
and the layout of a run directory. Models are tiny (see conftest.TINY) so each call is quick."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS_TEXT, RUN_NAME, TINY, describe, invoke, tree_hashes

from textgen.config import ModelConfig, SampleConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("own_cwd")

SUBPROCESS_TIMEOUT = 120
# glog / absl native log lines such as "I0000 00:00:1795979321.956253   22712 port.cc:153] ..."
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TEXTGEN_TF_LOGS"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must keep the logs away by itself
    return env


def _help(*args) -> str:
    result = invoke(*args, "--help", terminal_width=240, max_content_width=240)
    assert result.exit_code == 0, describe(result)
    assert result.stderr == ""
    return result.stdout


def _shown_default(help_text: str, option: str) -> str:
    """The `[default: X]` shown for `option` in `--help` output (its entry may wrap lines)."""
    entries, current = [], None
    for line in help_text.splitlines():
        if re.match(r"\s{1,4}-", line):
            current = [line]
            entries.append(current)
        elif current is not None and line.strip():
            current.append(line)
    for entry in entries:
        text = " ".join(part.strip() for part in entry)
        if re.match(rf"(-\w, )?{re.escape(option)}[ ,]", text):
            m = re.search(r"\[default: ([^;\]]*)", text)
            assert m, f"no default shown for {option}: {text!r}"
            return m.group(1).strip()
    raise AssertionError(f"{option} not in help:\n{help_text}")


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize("command, options", [
    ((), ["train", "sample", "--help", "--version"]),
    (("train",), ["--name", "--resume", "--runs-dir", "--units", "--batch-size", "--steps",
                  "--epochs", "--minutes", "--learning-rate", "--encoding", "--quiet"]),
    (("sample",), ["--runs-dir", "--checkpoint", "--temp", "--length", "--prime", "--seed",
                   "--top-k", "--top-p", "--num-samples"]),
])
def test_every_command_has_help(command, options):
    text = _help(*command)
    for option in options:
        assert option in text, f"{option} missing from `textgen {' '.join(command)} --help`"


README = Path(__file__).resolve().parents[1] / "README.md"


def _help_sections(text: str) -> dict[str, set[str]]:
    """{section title: the options listed in it (by first name: --learning-rate, not --lr)} of a
    command's --help."""
    sections, title = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][\w ]*:", line):
            title = line[:-1]
            sections[title] = set()
        elif title and re.match(r"  -", line):
            sections[title].add(re.search(r"--[a-z][\w-]*", line).group(0))  # its first name
    return sections


def _readme_training_groups() -> dict[str, set[str]]:
    """{group: options} of the README's Training table, whose `| **Group** | |` rows open groups."""
    table = README.read_text(encoding="utf-8").split("### Training", 1)[1].split("\n\n| option |", 1)[1]
    groups, title = {}, None
    for row in table.split("\n\n", 1)[0].splitlines():
        cell = row.split(" | ")[0].lstrip("| ")
        if cell.startswith("**"):
            title = cell.strip("*")
            groups[title] = set()
        elif title:
            groups[title] |= set(re.findall(r"`(--[a-z][\w-]*)", cell))
    return groups


def test_train_help_groups_options_as_the_readme_does():
    sections = _help_sections(_help("train"))
    readme = _readme_training_groups()
    assert list(readme) == ["Model", "Regularisation", "Optimisation", "Budget", "Data", "Run", "Devices"]
    assert list(sections) == [*readme, "Other options"]
    for group, options in readme.items():
        assert sections[group] == options, group
    assert sections["Other options"] == {"--help"}


def test_preset_help_says_what_each_preset_sets():
    """The --preset help, read back into options, is each preset of config.PRESETS."""
    from textgen.config import PRESETS

    text = " ".join(line.strip() for line in _help("train").split("Regularisation:")[0].splitlines())
    text = text.split("--preset", 1)[1].replace("- ", "-")  # undo click's wrapping at hyphens
    for name, preset in PRESETS.items():
        described = re.search(rf"{name} = (.*?)[;.](?: |$)", text).group(1)
        pairs = re.findall(r"--([a-z-]+) (\S+)", described)
        expected = {**preset["model"], **preset["train"]}
        number = re.compile(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?")
        assert {k.replace("-", "_"): float(v) if number.fullmatch(v) else v for k, v in pairs} == expected, name


SAMPLE_RANGES = [  # (option, range the help states, a value inside, a value just outside)
    ("--temp", "Range: 0 or more.", 0.0, -0.1),
    ("--length", "Range: 0 to 2,147,483,647.", 2**31 - 1, 2**31),
    ("--top-k", "Range: 0 to 2,147,483,647.", 0, -1),
    ("--top-p", "Range: above 0, at most 1.", 1.0, 0.0),
    ("--num-samples", "Range: 1 to 10,000.", 10_000, 10_001),
]


@pytest.mark.parametrize("option, stated, inside, outside", SAMPLE_RANGES)
def test_sample_help_states_the_ranges_it_accepts(option, stated, inside, outside):
    text = _help("sample")
    entry = text.split(f"  {option} ", 1)[1].split("\n  -", 1)[0]
    assert stated in " ".join(entry.split())
    field = {"--temp": "temperature"}.get(option, option[2:].replace("-", "_"))
    SampleConfig(**{field: inside}).validate()  # accepted
    result = invoke("sample", option, outside, "--runs-dir", "nowhere")
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {option} must"), describe(result)


def test_short_help_flag():
    result = invoke("sample", "-h")
    assert result.exit_code == 0, describe(result)
    assert "--temp" in result.stdout


def test_version():
    from textgen import __version__

    result = invoke("--version")
    assert result.exit_code == 0, describe(result)
    assert __version__ in result.stdout


# The defaults the README documents (its option tables), written out: --help must show these, and
# a command given no option must run with them. Compared with the config objects that set them,
# a changed default would pass unnoticed; here it fails until the README and this list change too.
TRAIN_DEFAULTS = [
    ("--embedding-dim", 64), ("--units", 256), ("--num-layers", 2), ("--dropout", 0.0),
    ("--batch-size", 64), ("--seq-len", 100), ("--learning-rate", 2e-3), ("--clip-norm", 5.0),
    ("--val-fraction", 0.1), ("--eval-every", 200), ("--eval-batches", 20), ("--keep", 3),
    ("--seed", 1234), ("--encoding", "utf-8"),
]
SAMPLE_DEFAULTS = [("--temp", 1.0), ("--length", 500), ("--top-k", 0), ("--top-p", 1.0), ("--num-samples", 1)]


@pytest.mark.parametrize("command, option, expected",
                         [("train", o, e) for o, e in TRAIN_DEFAULTS]
                         + [("sample", o, e) for o, e in SAMPLE_DEFAULTS])
def test_help_shows_the_documented_defaults(command, option, expected):
    shown = _shown_default(_help(command), option)
    if isinstance(expected, str):
        assert shown == expected
    else:
        assert float(shown) == pytest.approx(expected), f"{option}: help says {shown}, README {expected}"


def test_commands_given_no_options_run_with_the_documented_defaults(monkeypatch):
    """What a command uses when an option is left out is what --help and the README say: the
    configs `train` and `sample` build from no options, caught before any work starts."""
    import textgen.launch
    import textgen.sample

    made = {}

    def stop(name):
        def record(*args, **kwargs):
            made[name] = (args, kwargs)
            raise SystemExit(0)
        return record

    monkeypatch.setattr(textgen.launch, "launch", stop("train"))
    monkeypatch.setattr(textgen.sample, "sample_run", stop("sample"))
    invoke("train")
    invoke("sample")
    (_, model_options, train_options, *_), _ = made["train"]
    train = TrainConfig(**train_options)
    model = ModelConfig(**model_options)
    used = {**{f"--{k.replace('_', '-')}": v for k, v in vars(model).items()},
            **{f"--{k.replace('_', '-')}": v for k, v in vars(train).items()}}
    for option, expected in TRAIN_DEFAULTS:
        assert used[option] == expected, option
    assert (train.epochs, train.steps, train.minutes, train.epoch_budget()) == (None, None, None, 10)
    config = made["sample"][0][3]
    assert isinstance(config, SampleConfig)
    assert {o: getattr(config, n) for o, n in zip((o for o, _ in SAMPLE_DEFAULTS),
            ("temperature", "length", "top_k", "top_p", "num_samples"))} == dict(SAMPLE_DEFAULTS)
    assert (config.prime, config.seed) == ("", None)  # no prime; no seed: a random one


def test_help_does_not_import_tensorflow(tmp_path):
    """`--help` of every command answers without loading TensorFlow (or Keras)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from textgen.cli import main\n"
        "for args in (['--help'], ['train', '--help'], ['sample', '--help'], ['--version']):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          check=False, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr


def test_module_help_does_not_import_tensorflow(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "textgen", "--help"],
                          cwd=tmp_path, env=_env(), check=False, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "train" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert imported, "no -X importtime output"
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]


# ---------------------------------------------------------------------------- sampling


def _sample(run_dir, *args):
    result = invoke("sample", RUN_NAME, "--runs-dir", run_dir.parent, *args)
    assert result.exit_code == 0, describe(result)
    return result


def _samples(stdout: str, n: int, length: int) -> list[str]:
    """Parse `--num-samples n` output: blocks '----- sample i -----\\n<text>\\n'."""
    texts, rest = [], stdout
    for i in range(1, n + 1):
        header = f"----- sample {i} -----\n"
        assert rest.startswith(header), f"expected {header!r} at {rest[:60]!r}"
        rest = rest[len(header):]
        texts.append(rest[:length])
        assert rest[length:length + 1] == "\n", f"sample {i} is not {length} characters"
        rest = rest[length + 1:]
    assert rest == "", f"unexpected trailing output {rest[:60]!r}"
    return texts


def test_sample_prints_requested_length(trained_run):
    result = _sample(trained_run, "--length", 40, "--seed", 1)
    assert len(result.stdout) == 40 + 1  # the text and a final newline
    assert result.stdout.endswith("\n")
    assert set(result.stdout) <= set(CORPUS_TEXT)
    assert result.stderr == ""


def test_same_seed_same_text(trained_run):
    a = _sample(trained_run, "--length", 60, "--seed", 5).stdout
    b = _sample(trained_run, "--length", 60, "--seed", 5).stdout
    assert a == b


def test_different_seeds_differ(trained_run):
    a = _sample(trained_run, "--length", 60, "--seed", 5, "--temp", 1).stdout
    b = _sample(trained_run, "--length", 60, "--seed", 6, "--temp", 1).stdout
    assert a != b


def test_greedy_is_deterministic_without_seed(trained_run):
    a = _sample(trained_run, "--length", 40, "--temp", 0).stdout
    b = _sample(trained_run, "--length", 40, "--temp", 0).stdout
    assert a == b
    assert len(a) == 41


def test_top_k_1_and_tiny_top_p_are_greedy(trained_run):
    greedy = _sample(trained_run, "--length", 30, "--temp", 0, "--prime", "the").stdout
    assert _sample(trained_run, "--length", 30, "--top-k", 1, "--seed", 3, "--prime", "the").stdout == greedy
    assert _sample(trained_run, "--length", 30, "--top-p", 1e-6, "--seed", 4, "--prime", "the").stdout == greedy


def test_length_zero_echoes_only_the_prime(trained_run):
    assert _sample(trained_run, "--length", 0, "--prime", "cat").stdout == "cat\n"


def test_prime_is_echoed_first(trained_run):
    result = _sample(trained_run, "--prime", "the ", "--length", 30, "--seed", 3)
    assert result.stdout.startswith("the ")
    assert len(result.stdout) == len("the ") + 30 + 1


def test_num_samples(trained_run):
    result = _sample(trained_run, "--num-samples", 3, "--length", 25, "--seed", 2, "--prime", "cat")
    texts = _samples(result.stdout, 3, len("cat") + 25)
    assert all(t.startswith("cat") for t in texts)
    assert len(set(texts)) > 1  # independent samples


def test_checkpoint_last(copy_run):
    """--checkpoint last loads the latest checkpoint, in a run whose best is an earlier one (the
    session run, trained 3 more steps at a high rate, its run.json then naming step 3 the best)."""
    from textgen.inference import load_run
    from textgen.sample import generate_text

    run_dir = copy_run()
    resumed = invoke("train", "--resume", "--name", RUN_NAME, "--runs-dir", run_dir.parent, "--steps", 6,
                     "--learning-rate", 0.05, "--quiet")
    assert resumed.exit_code == 0, describe(resumed)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["checkpoints"]["last"] == "ckpt-00000006" and (run_dir / "ckpt-00000003").is_dir()
    meta["checkpoints"]["best"] = "ckpt-00000003"
    (run_dir / "run.json").write_text(json.dumps(meta))
    expected = {}
    for which in ("best", "last"):
        loaded = load_run(str(run_dir), run_dir.parent, which)
        expected[which] = generate_text(loaded.model, loaded.vocab, SampleConfig(length=200, seed=1))[0]
    assert expected["best"] != expected["last"]
    for which in ("best", "last"):
        printed = _sample(run_dir, "--checkpoint", which, "--length", 200, "--seed", 1).stdout
        assert printed == expected[which] + "\n", which


def test_sample_by_name_path_and_latest(trained_run):
    args = ["--length", 30, "--seed", 9]
    by_name = _sample(trained_run, *args).stdout
    by_path = invoke("sample", trained_run, "--runs-dir", "elsewhere", *args)
    assert by_path.exit_code == 0, describe(by_path)
    latest = invoke("sample", "--runs-dir", trained_run.parent, *args)
    assert latest.exit_code == 0, describe(latest)
    named_latest = invoke("sample", "latest", "--runs-dir", trained_run.parent, *args)
    assert named_latest.exit_code == 0, describe(named_latest)
    assert by_name == by_path.stdout == latest.stdout == named_latest.stdout


@pytest.mark.parametrize("command", [["info"], ["sample", "--length", "3"], ["eval", "CORPUS"]])
def test_every_command_takes_latest_as_run(command, trained_run, corpus_file):
    args = [corpus_file if a == "CORPUS" else a for a in command]
    result = invoke(args[0], "latest", *args[1:], "--runs-dir", trained_run.parent)
    assert result.exit_code == 0, describe(result)
    if command == ["info"]:
        assert f"run:              {trained_run}" in result.stdout


def test_missing_best_checkpoint_is_said_on_stderr(copy_run):
    """run.json names a best checkpoint that is gone: the last one loads, and stderr says so."""
    run_dir = copy_run()
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    meta["checkpoints"]["best"] = "ckpt-00000001"  # never written
    (run_dir / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    result = invoke("sample", run_dir, "--length", 5, "--seed", 1)
    assert result.exit_code == 0, describe(result)
    assert len(result.stdout) == 6
    assert result.stderr.startswith("Warning: the best checkpoint ckpt-00000001 of run tiny is missing; "
                                    "using ckpt-00000003 instead"), describe(result)
    meta["checkpoints"].pop("best")  # none recorded at all
    (run_dir / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    result = invoke("sample", run_dir, "--length", 5, "--seed", 1)
    assert result.exit_code == 0 and "records no best checkpoint; using the last one" in result.stderr


def test_sample_as_subprocess(trained_run, tmp_path):
    before = tree_hashes(trained_run)
    proc = subprocess.run(
        [sys.executable, "-m", "textgen", "sample", RUN_NAME, "--runs-dir", str(trained_run.parent),
         "--length", "50", "--seed", "5"],
        cwd=tmp_path, env=_env(), check=False, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 51
    assert "Traceback" not in proc.stderr
    assert "I0000" not in proc.stderr and "W0000" not in proc.stderr and "E0000" not in proc.stderr
    assert not NATIVE_LOG_LINE.search(proc.stderr), proc.stderr
    assert "absl::InitializeLog" not in proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    # the same text as in-process
    assert proc.stdout == _sample(trained_run, "--length", 50, "--seed", 5).stdout
    assert tree_hashes(trained_run) == before


# ---------------------------------------------------------------------------- training


def test_run_directory_layout(trained_run):
    meta = json.loads((trained_run / "run.json").read_text(encoding="utf-8"))
    assert meta["format"] == "textgen-run"
    assert meta["name"] == RUN_NAME
    assert meta["step"] == 3
    assert meta["model"]["units"] == 16 and meta["model"]["num_layers"] == 1
    assert meta["model"]["vocab_size"] == len(set(CORPUS_TEXT))
    vocab = json.loads((trained_run / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["chars"] == sorted(set(CORPUS_TEXT))
    for which in ("last", "best"):
        ckpt = trained_run / meta["checkpoints"][which]
        assert ckpt.name == "ckpt-00000003"
        for name in ("model.weights.h5", "resume.npz", "state.json"):
            assert (ckpt / name).is_file(), f"{ckpt}/{name} missing"
    for board in ("train", "validation"):  # two TensorBoard runs, side by side
        events = list((trained_run / board).iterdir())
        assert any(p.name.startswith("events.out.tfevents") and p.stat().st_size > 0 for p in events)
    assert not (trained_run / "train.lock").exists()  # released after training
    assert not [p for p in trained_run.iterdir() if ".tmp" in p.name]  # no leftovers


def test_train_reports_on_stderr(corpus_file, tmp_path):
    runs = tmp_path / "runs"
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "fresh", *TINY)
    assert result.exit_code == 0, describe(result)
    assert result.stdout == ""
    assert "training" in result.stderr and "stopped (budget) at step 3" in result.stderr
    assert (runs / "fresh" / "run.json").is_file()


def _bar_postfixes(stderr: str) -> list[dict]:
    """The `key=value` postfixes of every redraw of the training bar, in order."""
    shown = []
    for frame in re.split(r"[\r\n]", stderr):
        if "step" in frame and "val_bpc=" in frame:
            postfix = frame.rsplit("]", 1)[0].split(", ")
            shown.append(dict(item.split("=", 1) for item in postfix if "=" in item))
    return shown


def test_the_bar_shows_bits_per_character_for_training_and_validation(corpus_file, tmp_path):
    runs = tmp_path / "runs"
    args = [a for a in TINY if a != "--quiet"]
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "bar", *args)
    assert result.exit_code == 0, describe(result)
    last = _bar_postfixes(result.stderr)[-1]
    record = json.loads((runs / "bar" / "run.json").read_text())["history"][-1]
    assert last["bpc"] == f"{record['train_loss'] / math.log(2):.3f}"  # nats read back, in bits
    assert last["val_bpc"] == f"{record['val_bpc']:.3f}" and "loss" not in last
    assert list(last) == ["bpc", "val_bpc", "chars_s"]


def test_a_resumed_bar_shows_the_last_validation_until_the_next(copy_run):
    run_dir = copy_run()
    before = json.loads((run_dir / "run.json").read_text())["history"][-1]["val_bpc"]
    result = invoke("train", "--resume", "--name", RUN_NAME, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--eval-every", 3)
    assert result.exit_code == 0, describe(result)
    shown = _bar_postfixes(result.stderr)
    assert shown[0] == {"bpc": "-", "val_bpc": f"{before:.3f}", "chars_s": "-"}, result.stderr
    after = json.loads((run_dir / "run.json").read_text())["history"][-1]["val_bpc"]
    assert shown[-1]["val_bpc"] == f"{after:.3f}"


def test_resuming_a_run_whose_budget_is_spent_says_so_in_one_line(copy_run):
    run_dir = copy_run()  # trained to its --steps 3
    before = tree_hashes(run_dir)
    result = invoke("train", "--resume", "--name", RUN_NAME, "--runs-dir", run_dir.parent, "--quiet")
    assert result.exit_code == 0, describe(result)
    assert result.stderr.splitlines() == [
        f"budget reached; pass --steps/--minutes to train further ({run_dir} is at step 3, epoch 0)"]
    assert tree_hashes(run_dir) == before  # nothing trained, nothing written
    result = invoke("train", "--resume", "--name", RUN_NAME, "--runs-dir", run_dir.parent,
                    "--steps", 2, "--quiet")  # a step budget below where the run is
    assert result.exit_code == 0 and result.stderr.startswith("budget reached; "), describe(result)


def test_skipped_corpus_files_are_said_kept_in_the_run_and_said_again_from_the_cache(tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    (corpus / "cat.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    (corpus / "photo.jpg").write_bytes(b"\xff\xd8\xff\x00JFIF" * 10)
    (corpus / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))  # not UTF-8
    runs = tmp_path / "runs"
    line = (f"skipped 2 binary, undecodable or unreadable files in the corpus directories: "
            f"{corpus / 'latin.txt'}, {corpus / 'photo.jpg'}")
    for name in ("first", "second"):  # the second run reuses the corpus cache, no file re-read
        result = invoke("train", corpus, "--runs-dir", runs, "--name", name, *TINY)
        assert result.exit_code == 0, describe(result)
        assert result.stderr.splitlines().count(line) == 1, describe(result)
        meta = json.loads((runs / name / "run.json").read_text())
        assert meta["corpus"]["skipped"] == {"count": 2, "names": [str(corpus / "latin.txt"),
                                                                   str(corpus / "photo.jpg")]}
    result = invoke("train", "--resume", "--name", "first", "--runs-dir", runs, "--steps", 4, "--quiet")
    assert result.exit_code == 0 and line in result.stderr.splitlines(), describe(result)
    info = invoke("info", "first", "--runs-dir", runs)
    assert "skipped files:    2 binary, undecodable or unreadable" in info.stdout
    clean = invoke("train", corpus / "cat.txt", "--runs-dir", runs, "--name", "clean", *TINY)
    assert clean.exit_code == 0 and "binary, undecodable" not in clean.stderr, describe(clean)
    assert "skipped" not in json.loads((runs / "clean" / "run.json").read_text())["corpus"]


def test_resume_continues_to_more_steps(copy_run):
    run_dir = copy_run()
    result = invoke("train", "--resume", "--name", RUN_NAME, "--runs-dir", run_dir.parent,
                    "--steps", 6, "--eval-every", 3, "--quiet")
    assert result.exit_code == 0, describe(result)
    assert "resuming" in result.stderr
    assert "at step 3" in result.stderr  # where it picked up
    assert "stopped (budget) at step 6" in result.stderr
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert meta["step"] == 6
    assert meta["checkpoints"]["last"] == "ckpt-00000006"
    assert (run_dir / "ckpt-00000006" / "model.weights.h5").is_file()
    assert [h["step"] for h in meta["history"]] == [3, 6]
    assert not (run_dir / "train.lock").exists()
    out = invoke("sample", run_dir, "--checkpoint", "last", "--length", 10, "--seed", 1)
    assert out.exit_code == 0, describe(out)


def test_min_count_folds_rare_characters_into_one_unknown_symbol(tmp_path):
    """`--min-count 3`: characters seen fewer than 3 times become one symbol; info reports it,
    eval scores them as it, a prime may hold them, and generated text never contains it; the run
    resumes with the same folding."""
    from textgen.vocab import UNKNOWN

    corpus = tmp_path / "rare.txt"
    corpus.write_text(CORPUS_TEXT + "xyz\nqq\n", encoding="utf-8")  # x, y, z once, q twice
    runs = tmp_path / "runs"
    result = invoke("train", corpus, "--runs-dir", runs, "--name", "rare", "--min-count", 3, *TINY)
    assert result.exit_code == 0, describe(result)
    vocab = json.loads((runs / "rare" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["unknown"] == UNKNOWN and vocab["chars"] == sorted(set(CORPUS_TEXT) | {UNKNOWN})
    info = invoke("info", "rare", "--runs-dir", runs)
    assert "4 distinct characters seen fewer than 3 times (5 occurrences) are one unknown symbol" in info.stdout
    held_out = tmp_path / "held.txt"
    held_out.write_text("the cat sat on the mat\nthe zebra\n", encoding="utf-8")
    scored = invoke("eval", "rare", held_out, "--runs-dir", runs, "--quiet")
    assert scored.exit_code == 0, describe(scored)
    assert "rare characters scored as the unknown symbol: 3 (3 distinct" in scored.stdout  # z, b, r
    assert scored.stdout.splitlines()[-2].split()[3:] == ["33", "0", "(0.00%)"]  # total: none skipped
    sampled = invoke("sample", "rare", "--runs-dir", runs, "--prime", "qx", "--temp", "3", "--length", 400,
                     "--num-samples", 4, "--seed", 1)
    assert sampled.exit_code == 0, describe(sampled)
    assert UNKNOWN not in sampled.stdout.replace("----- sample", "")  # never generated
    resumed = invoke("train", corpus, "--resume", "--name", "rare", "--runs-dir", runs, "--steps", 4, "--quiet")
    assert resumed.exit_code == 0, describe(resumed)


def test_regularisation_options_are_saved_and_reported(corpus_file, tmp_path):
    """--recurrent-dropout and --weight-decay reach run.json and `textgen info`; old runs
    without them read as 0 (what they trained with)."""
    runs = tmp_path / "runs"
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "reg", "--recurrent-dropout", 0.2,
                    "--weight-decay", 0.05, *TINY)
    assert result.exit_code == 0, describe(result)
    meta = json.loads((runs / "reg" / "run.json").read_text())
    assert meta["model"]["recurrent_dropout"] == 0.2 and meta["train"]["weight_decay"] == 0.05
    info = invoke("info", "reg", "--runs-dir", runs)
    assert "recurrent dropout 0.2" in info.stdout and "weight decay 0.05" in info.stdout
    meta["model"].pop("recurrent_dropout")
    meta["train"].pop("weight_decay")
    (runs / "reg" / "run.json").write_text(json.dumps(meta))
    info = invoke("info", "reg", "--runs-dir", runs)
    assert "recurrent dropout 0.0" in info.stdout and "weight decay 0," in info.stdout
