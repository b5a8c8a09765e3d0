"""`textgen export`: every format, run by its own runtime in a process of its own, computes textgen's
logits and writes `textgen sample --temp 0`'s text.

One small run (2 x 128, the `tiny` preset's shape, trained 40 steps on word-salad text) is
exported once per format. For each export, tests/export_probe.py runs the format's example script
(examples/export_*.py) in a separate process that imports only that runtime: it prints 300
greedy characters after a prime and feeds held-out text one character at a time. The tests
compare those logits with textgen's own model (max |difference| <= 1e-4 for float32), the text
with `textgen sample --temp 0`, and the quantized LiteRT file's size and bits per character with
the float32 one's.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import describe, invoke, train_run, tree_hashes
from textgen.config import SEED_LIMIT

from textgen.cell import LSTM

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("export_probe.py")
FORMATS = ("savedmodel", "litert", "onnx", "keras")
EXPORTS = {  # name -> extra `textgen export` options
    "savedmodel": ["--format", "savedmodel"],
    "litert": ["--format", "litert"],
    "litert-int8": ["--format", "litert", "--quantize", "dynamic"],
    "onnx": ["--format", "onnx"],
    "keras": ["--format", "keras"],
}
NOT_LOADED = {  # modules that the example's process must not have imported (TensorFlow itself
    # imports Keras)
    "savedmodel": {"textgen"}, "litert": {"textgen", "tensorflow", "keras"},
    "litert-int8": {"textgen", "tensorflow", "keras"}, "onnx": {"textgen", "tensorflow", "keras"},
    "keras": set(),
}
SHAPE = ["--units", "128", "--embedding-dim", "32", "--num-layers", "2", "--batch-size", "16",
         "--seq-len", "64", "--steps", "40", "--eval-every", "40", "--learning-rate", "0.01",
         "--warmup-steps", "5", "--quiet"]
PRIME, LENGTH, CHECK_CHARS, BPC_CHARS = "The ", 300, 200, 1000
WORDS = ("the of and to a in that is was he for it with as his on be at by this had not are but from "
         "or have an they which one you were her all she there would their we him been has when who "
         "will more no if out so said what up its about into than them can only other new some could "
         "time these two may then do first any my now such like our over man me even most made after").split()


def word_text(seed: int, chars: int) -> str:
    """Sentences of common English words in random order: a corpus with some structure."""
    rng, parts = random.Random(seed), []
    while sum(map(len, parts)) < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        parts.append(sentence.capitalize() + rng.choice(".,?!") + ("\n" if rng.random() < 0.3 else " "))
    return "".join(parts)


def bits_per_char(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean -log2 p(ids[t + 1]) under logits[t] (the reference formula, written out here)."""
    logits = logits[:-1].astype(np.float64)
    log_norm = np.logaddexp.reduce(logits, axis=-1)
    return float(np.mean(log_norm - logits[np.arange(len(logits)), ids[1:]]) / np.log(2))


@pytest.fixture(scope="session")
def texts(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("export-texts")
    paths = {"corpus": base / "corpus.txt", "held": base / "held.txt"}
    paths["corpus"].write_text(word_text(0, 30_000), encoding="utf-8")
    held = word_text(1, 2 * BPC_CHARS)[:BPC_CHARS]
    paths["held"].write_text(held, encoding="utf-8")
    paths["check"] = base / "check.txt"
    paths["check"].write_text(held[:CHECK_CHARS], encoding="utf-8")
    return paths


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, texts) -> Path:
    return train_run(tmp_path_factory.mktemp("export-run"), texts["corpus"], "words", SHAPE)


@pytest.fixture(scope="session")
def exports(tmp_path_factory, run_dir, texts) -> dict:
    """{name: (export directory, what `textgen export` printed)} for every entry of EXPORTS."""
    base, made = tmp_path_factory.mktemp("exports"), {}
    for name, options in EXPORTS.items():
        result = invoke("export", run_dir, "--runs-dir", run_dir.parent, "--out", base / name,
                        "--eval-text", texts["held"], *options)
        assert result.exit_code == 0, describe(result)
        made[name] = (base / name, result.stdout)
    return made


@pytest.fixture(scope="session")
def probes(exports, texts, tmp_path_factory) -> dict:
    """{name: {"printed", "modules", "logits"}}: every export's example, run side by side."""
    running = {}
    for name, (out, _) in exports.items():
        example = ROOT / "examples" / f"export_{name.split('-')[0]}.py"
        text = texts["held"] if name.startswith("litert") else texts["check"]
        result_dir = tmp_path_factory.mktemp(f"probe-{name}")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if name != "keras":  # a Python without textgen on its path
            env.pop("PYTHONPATH", None)
        command = [sys.executable, str(PROBE), str(example), str(out), str(text), PRIME, str(LENGTH),
                   str(result_dir)]
        running[name] = (subprocess.Popen(command, env=env, cwd=result_dir, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), result_dir)
    results = {}
    for name, (process, result_dir) in running.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
        results[name] = json.loads((result_dir / "result.json").read_text(encoding="utf-8"))
        results[name]["logits"] = np.load(result_dir / "logits.npy")
    return results


@pytest.fixture(scope="session")
def reference(run_dir, texts) -> dict:
    """textgen's own logits on the held-out text, and `textgen sample --temp 0`'s text."""
    import tensorflow as tf

    from textgen.inference import load_run

    loaded = load_run(run_dir, run_dir.parent)
    ids = loaded.vocab.encode(texts["held"].read_text(encoding="utf-8")).astype(np.int32)
    logits = tf.function(lambda x: loaded.model(x)[0])(tf.constant(ids[None]))  # (1, BPC_CHARS, vocab)
    result = invoke("sample", run_dir, "--runs-dir", run_dir.parent, "--temp", "0", "--prime", PRIME,
                    "--length", LENGTH)
    assert result.exit_code == 0, describe(result)
    return {"ids": ids, "logits": logits.numpy()[0], "sample": result.stdout, "vocab": loaded.vocab}


@pytest.mark.parametrize("name", ["savedmodel", "litert", "onnx", "keras"])
def test_export_computes_textgens_logits_in_its_own_runtime(name, probes, reference):
    probe = probes[name]
    assert not NOT_LOADED[name] & set(probe["modules"]), probe["modules"]
    got, expected = probe["logits"][:CHECK_CHARS], reference["logits"][:CHECK_CHARS]
    assert got.shape == expected.shape == (CHECK_CHARS, reference["vocab"].size)
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("name", ["savedmodel", "litert", "onnx", "keras"])
def test_export_writes_textgen_samples_greedy_text(name, probes, reference):
    assert reference["sample"].startswith(PRIME) and len(reference["sample"]) == len(PRIME) + LENGTH + 1
    assert probes[name]["printed"] == reference["sample"]


def test_quantized_litert_is_small_and_scores_within_2_percent(exports, probes, reference):
    float_size = (exports["litert"][0] / "model.tflite").stat().st_size
    int8_size = (exports["litert-int8"][0] / "model.tflite").stat().st_size
    assert int8_size <= 0.30 * float_size, (int8_size, float_size)
    ids = reference["ids"]
    bpc_float = bits_per_char(probes["litert"]["logits"], ids)
    bpc_int8 = bits_per_char(probes["litert-int8"]["logits"], ids)
    assert bpc_float == pytest.approx(bits_per_char(reference["logits"], ids), abs=1e-4)
    assert abs(bpc_int8 / bpc_float - 1) <= 0.02, (bpc_int8, bpc_float)
    assert bpc_float < 0.8 * np.log2(reference["vocab"].size)  # a trained model, not a uniform one
    # the command reported the same sizes and scores (on the same held-out text)
    printed = exports["litert-int8"][1]
    assert f"{int8_size / float_size:.0%} of float32's" in printed
    reported = re.search(r"on 1000 characters of .*: ([0-9.]+) -> ([0-9.]+) ", printed)
    assert reported, printed
    assert float(reported[1]) == pytest.approx(bpc_float, abs=2e-4)
    assert float(reported[2]) == pytest.approx(bpc_int8, abs=2e-4)


def test_every_export_has_vocab_readme_and_manifest(exports, reference):
    chars = reference["vocab"].chars
    for name, (out, printed) in exports.items():
        assert json.loads((out / "vocab.json").read_text(encoding="utf-8")) == chars
        readme = (out / "README.md").read_text(encoding="utf-8")
        assert "| `ids` | (batch,) | int32 |" in readme and "| `new_c1` | (batch, 128) | float32 |" in readme
        assert f"| `logits` | (batch, {len(chars)}) | float32 |" in readme
        manifest = json.loads((out / "export.json").read_text(encoding="utf-8"))
        assert manifest["export_format"] == name.split("-")[0]
        assert manifest["model"] == {"vocab_size": len(chars), "embedding_dim": 32, "units": 128,
                                     "num_layers": 2}
        assert [v["name"] for v in manifest["step"]["inputs"]] == ["ids", "h0", "c0", "h1", "c1"]
        rows = [line.split() for line in printed.splitlines() if line.startswith("  ")]  # name, size, unit
        assert sorted(row[0] for row in rows) == sorted(p.name for p in out.iterdir())
        for file_name, size, unit in rows:
            path = out / file_name
            actual = path.stat().st_size if path.is_file() else sum(
                p.stat().st_size for p in path.rglob("*") if p.is_file())
            assert float(size) * {"B": 1, "kB": 1e3, "MB": 1e6}[unit] == pytest.approx(actual, rel=0.06, abs=1)
    assert (exports["savedmodel"][0] / "saved_model.pb").is_file()
    for name, file_name in [("litert", "model.tflite"), ("onnx", "model.onnx"), ("keras", "model.keras")]:
        assert (exports[name][0] / file_name).is_file()


@pytest.mark.parametrize("offset, refused", [(5e-5, False), (2e-4, True)], ids=["within", "beyond"])
def test_an_export_whose_runtime_disagrees_is_refused(offset, refused, run_dir, tmp_path, monkeypatch):
    """The 1e-4 promise, forced: the export's runtime made to return logits `offset` away from
    textgen's. Beyond 1e-4 the export is refused in one line and nothing is written; within it,
    it is published and says how far it was."""
    import textgen.export.command as export_command

    real = export_command.feed
    monkeypatch.setattr(export_command, "feed", lambda *args, **kwargs: real(*args, **kwargs) + offset)
    out = tmp_path / "out"
    result = invoke("export", run_dir, "--runs-dir", run_dir.parent, "--format", "keras", "--out", out)
    if refused:
        assert result.exit_code == 2, describe(result)
        assert result.stderr.startswith("Error: the keras export's logits differ from textgen's by 0.0002 "
                                         "(more than 0.0001); nothing was written"), describe(result)
        assert not out.exists() and not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())
    else:
        assert result.exit_code == 0, describe(result)
        within = re.search(r"logits within ([0-9.e+-]+) of textgen's", result.stdout)
        assert within and 5e-5 <= float(within.group(1)) < 1e-4, describe(result)  # the offset, and a little
        assert (out / "model.keras").is_file()


def test_savedmodel_generate_signature_samples_reproducibly(exports, reference):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exports["savedmodel"][0]))
    generate = loaded.signatures["generate"]
    prime = tf.constant(reference["vocab"].encode(PRIME).astype(np.int32))

    def ids(temperature, seed, top_k=0, top_p=1.0, length=200):
        out = generate(prime=prime, length=tf.constant(length), temperature=tf.constant(temperature),
                       top_k=tf.constant(top_k), top_p=tf.constant(top_p), seed=tf.constant(seed, tf.int64))
        return out["ids"].numpy().tolist()

    greedy = ids(0.0, 0)
    assert PRIME + reference["vocab"].decode(greedy) == reference["sample"][: len(PRIME) + 200]
    assert ids(0.9, 5) == ids(0.9, 5)  # same seed, same text
    assert ids(0.9, 5) != ids(0.9, 6)
    assert ids(0.9, SEED_LIMIT + 5) == ids(0.9, 5)  # seeds outside it: reduced, as older exports do
    assert ids(1.0, 3, top_k=1) == greedy  # one candidate left: the likeliest
    assert ids(1.0, 3, top_p=1e-6) == greedy
    assert ids(0.0, 0, length=0) == []
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_p"):
        ids(1.0, 0, top_p=0.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="prime"):
        generate(prime=tf.constant([], tf.int32), length=tf.constant(5), temperature=tf.constant(0.0),
                 top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int64))


@pytest.mark.parametrize("name", FORMATS)
def test_batched_streams_are_independent(name, exports, reference):
    from textgen.export.check import open_runner, zero_states

    step = open_runner(name, exports[name][0])
    ids = reference["ids"][:3]
    batched, _ = step(ids, zero_states(2, 128, LSTM, batch=3))
    for row, char_id in enumerate(ids):
        single, _ = step(np.array([char_id], np.int32), zero_states(2, 128, LSTM))
        np.testing.assert_allclose(batched[row], single[0], atol=1e-5)


@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_one_layer_run_exports(export_format, trained_run, tmp_path):
    """The session's 1 x 16 run (one layer: no stacked kernels, states h0 and c0 only)."""
    from textgen.export.check import feed, open_runner
    from textgen.inference import load_run

    result = invoke("export", trained_run, "--runs-dir", trained_run.parent, "--format", export_format,
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    loaded = load_run(trained_run, trained_run.parent)
    ids = loaded.vocab.encode("the cat sat on the mat\n" * 3).astype(np.int32)
    expected = loaded.model.predict_on_batch(ids[None])[0][0]  # (len, vocab) via Keras's own predict
    got = feed(open_runner(export_format, tmp_path / "out"), ids, num_layers=1, units=16, cell=LSTM)
    assert np.abs(got - expected).max() <= 1e-4
    manifest = json.loads((tmp_path / "out" / "export.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in manifest["step"]["inputs"]] == ["ids", "h0", "c0"]


@pytest.mark.parametrize("export_format", ["onnx", "keras"])
def test_two_level_head_run_samples_evaluates_and_exports(export_format, corpus_file, tmp_path):
    """A run with `--head-shortlist 3` (a two-level output layer): `info` says so, `sample` and
    `eval` work, and the export (both softmaxes and the frequency order in the runtime's graph,
    or the Keras model itself) computes the model's log-probabilities."""
    from textgen.export.check import feed, open_runner
    from textgen.inference import load_run

    runs = tmp_path / "runs"
    result = invoke("train", corpus_file, "--runs-dir", runs, "--name", "two", "--units", "16",
                    "--embedding-dim", "8", "--num-layers", "1", "--head-shortlist", "3", "--batch-size",
                    "4", "--seq-len", "16", "--steps", "3", "--eval-every", "3", "--quiet")
    assert result.exit_code == 0, describe(result)
    loaded = load_run(runs / "two", runs)
    assert loaded.model.shortlist == 3 and loaded.model.tail.kernel.shape == (16, loaded.vocab.size - 3)
    info = invoke("info", "two", "--runs-dir", runs)
    assert "two-level softmax (3 frequent characters, then the rest)" in info.stdout, describe(info)
    sample = invoke("sample", "two", "--runs-dir", runs, "--length", 40, "--seed", 1)
    assert sample.exit_code == 0 and len(sample.stdout.rstrip("\n")) >= 40, describe(sample)
    scored = invoke("eval", "two", corpus_file, "--runs-dir", runs, "--quiet")
    assert scored.exit_code == 0 and "\ntotal " in scored.stdout, describe(scored)
    result = invoke("export", runs / "two", "--runs-dir", runs, "--format", export_format,
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    ids = loaded.vocab.encode("the cat sat on the mat\n" * 2).astype(np.int32)
    expected = loaded.model.predict_on_batch(ids[None])[0][0]  # (len, vocab) log-probabilities
    got = feed(open_runner(export_format, tmp_path / "out"), ids, num_layers=1, units=16, cell=LSTM)
    assert np.abs(got - expected).max() <= 1e-4


def test_keras_config_round_trips(run_dir):
    from textgen.cell import LSTMCell
    from textgen.inference import load_run
    from textgen.model import CharLSTM
    from textgen.recurrent import LSTMLayer

    model = load_run(run_dir, run_dir.parent).model
    rebuilt = CharLSTM.from_config(model.get_config())
    assert rebuilt.config == model.config and rebuilt.lstm_path == model.lstm_path
    layer = model.lstm_layers[1]
    assert LSTMLayer.from_config(layer.get_config()).get_config() == layer.get_config()
    assert LSTMCell.from_config(layer.cell.get_config()).units == 128


def test_examples_are_at_most_65_lines():
    for name in FORMATS:
        lines = (ROOT / "examples" / f"export_{name}.py").read_text(encoding="utf-8").splitlines()
        assert len(lines) <= 65 and max(map(len, lines)) <= 110, name


def test_help_lists_the_options_and_loads_no_tensorflow(tmp_path):
    """`textgen export --help`, and refusing a bad --format, answer without TensorFlow."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from textgen.cli import main\n"
        "r = CliRunner().invoke(main, ['export', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "r = CliRunner().invoke(main, ['export', '--format', 'tfjs', '--out', 'x'])\n"
        "assert r.exit_code == 2, r.output\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--format", "--out", "--checkpoint", "--quantize", "--eval-text", "--runs-dir"):
        assert option in proc.stdout
    from textgen.config import ExportConfig

    assert f"[default: {ExportConfig().quantize}]" in proc.stdout


# ----- bad input: one line on stderr, exit code 2, nothing lost -----

def one_line_error(result) -> str:
    assert result.exit_code == 2, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), describe(result)
    return lines[0]


def test_unknown_run(tmp_path):
    message = one_line_error(invoke("export", "nope", "--runs-dir", tmp_path, "--format", "onnx",
                                    "--out", tmp_path / "out"))
    assert "nope" in message
    assert not (tmp_path / "out").exists()


def test_unknown_format_misplaced_quantize_and_missing_eval_text(run_dir, tmp_path):
    common = [run_dir, "--runs-dir", run_dir.parent, "--out", tmp_path / "out"]
    assert "--eval-text" in one_line_error(invoke("export", *common, "--format", "keras", "--eval-text",
                                                  tmp_path / "missing.txt"))
    assert "savedmodel, litert, onnx, keras" in one_line_error(invoke("export", *common, "--format", "tfjs"))
    message = one_line_error(invoke("export", *common, "--format", "onnx", "--quantize", "dynamic"))
    assert "--format litert only" in message
    assert "choose one of none, dynamic" in one_line_error(
        invoke("export", *common, "--format", "litert", "--quantize", "int4"))


def test_unwritable_out(run_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me", encoding="utf-8")
    common = [run_dir, "--runs-dir", run_dir.parent, "--format", "keras"]
    assert "cannot write" in one_line_error(invoke("export", *common, "--out", blocker / "out"))
    assert "is a file" in one_line_error(invoke("export", *common, "--out", blocker))
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not an export")
    before = tree_hashes(tmp_path)
    assert "other files in it" in one_line_error(invoke("export", *common, "--out", other))
    assert tree_hashes(tmp_path) == before


def test_missing_runtime_names_the_pip_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    message = one_line_error(invoke("export", run_dir, "--runs-dir", run_dir.parent, "--format", "onnx",
                                    "--out", tmp_path / "out"))
    assert "pip install onnxruntime" in message
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    message = one_line_error(invoke("export", run_dir, "--runs-dir", run_dir.parent, "--format", "litert",
                                    "--out", tmp_path / "out"))
    assert "pip install ai-edge-litert" in message
    assert not (tmp_path / "out").exists()


def test_export_replaces_an_earlier_export_and_leaves_no_staging(run_dir, tmp_path):
    out = tmp_path / "out"
    # without --eval-text: the exports are checked on text sampled from the model
    for options in (["--format", "onnx"], ["--format", "keras", "--checkpoint", "last"]):
        result = invoke("export", run_dir, "--runs-dir", run_dir.parent, "--out", out, *options)
        assert result.exit_code == 0, describe(result)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "export.json", "model.keras", "vocab.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or replaced copy left


def test_a_large_vocabulary_export_is_about_the_size_of_its_weights(tmp_path):
    """With 3,000 characters the step keeps the embedding apart from the first layer's input
    projection (a folded (3000, 64) table would hold 8x the embedding's numbers): the ONNX file
    and the SavedModel's variables are the weights' size, and still compute the model's logits."""
    from textgen.config import ExportConfig, ModelConfig
    from textgen.export.check import feed, open_runner, reference_logits
    from textgen.export.onnx_format import convert_onnx
    from textgen.export.step_module import save_savedmodel
    from textgen.model import build_model, count_params

    config = ModelConfig(vocab_size=3000, embedding_dim=8, units=16, num_layers=1)
    model = build_model(config)
    weights = 4 * count_params(model)  # float32 bytes: ~0.3 MB (the folded table alone: 0.77 MB)
    (tmp_path / "onnx").mkdir()
    convert_onnx(model, tmp_path / "onnx" / "model.onnx", ExportConfig().onnx_opset)
    save_savedmodel(model, tmp_path / "savedmodel", with_generate=False)
    onnx_bytes = (tmp_path / "onnx" / "model.onnx").stat().st_size
    variables = sum(f.stat().st_size for f in (tmp_path / "savedmodel" / "variables").rglob("*") if f.is_file())
    assert weights <= onnx_bytes <= 1.05 * weights, (onnx_bytes, weights)
    assert weights <= variables <= 1.05 * weights, (variables, weights)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, 12).astype(np.int32)
    expected = reference_logits(model, ids)
    for export_format in ("onnx", "savedmodel"):
        got = feed(open_runner(export_format, tmp_path / export_format), ids, 1, 16, LSTM)
        assert np.abs(got - expected).max() <= 1e-5, export_format
