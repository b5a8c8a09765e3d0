"""One rule for the sampling seed and temperature: `textgen sample`, `textgen viz --sample` and a
`textgen serve` request refuse and accept exactly the same values, with the same one-line message
(textgen.config.check_seed / check_temperature), and an export's `generate` keys its RNG with the
accepted seeds as they are (tests/test_export_command.py runs that one on a real export)."""

from __future__ import annotations

import pytest

from conftest import describe, invoke
from textgen.config import SEED_LIMIT, SampleConfig, ServeConfig, check_seed, seed_or_random
from textgen.errors import TextgenError
from textgen.vocab import Vocabulary

REFUSED_SEEDS = [-1, SEED_LIMIT, 2**32 - 1, 2**32, 2**63]
ACCEPTED_SEEDS = [0, 1, SEED_LIMIT - 1]
REFUSED_TEMPERATURES = ["-1", "nan", "inf"]


def seed_message(seed) -> str:
    return f"must be an integer from 0 to {SEED_LIMIT - 1}, got {seed}"


def command_error(*args) -> str:
    """The one `Error:` line of a command that must fail (here: on the seed or the missing run)."""
    result = invoke(*args)
    assert result.exit_code == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), describe(result)
    return lines[0]


@pytest.fixture(scope="module")
def completions():
    from textgen.serve import completions

    return completions


def serve_error(completions, **fields) -> str | None:
    """The 400 message `textgen serve` gives a request with `fields`, or None if it accepts it."""
    try:
        completions.parse_completion({"prompt": "ab", **fields}, {"m": Vocabulary("abc")}, ServeConfig())
    except completions.RequestError as e:
        assert e.status == 400
        return e.message
    return None


@pytest.mark.parametrize("seed", REFUSED_SEEDS + [True, 1.5, "3"])
def test_the_shared_rule_refuses(seed):
    with pytest.raises(TextgenError, match=r"^--seed must be an integer from 0 to 2147483647, got "):
        check_seed(seed)


@pytest.mark.parametrize("seed", ACCEPTED_SEEDS)
def test_the_shared_rule_accepts(seed):
    check_seed(seed)
    assert SampleConfig(seed=seed).seed == seed


def test_a_missing_seed_becomes_an_accepted_one():
    drawn = {seed_or_random(None) for _ in range(50)}
    assert len(drawn) > 40
    for seed in drawn:
        check_seed(seed)
    assert seed_or_random(7) == 7


@pytest.mark.parametrize("seed", REFUSED_SEEDS)
def test_every_command_refuses_the_same_seeds(seed, tmp_path, completions):
    runs = tmp_path / "runs"
    assert command_error("sample", "nope", "--runs-dir", runs, "--seed", seed) == f"Error: --seed {seed_message(seed)}"
    assert command_error("viz", "nope", "--sample", 5, "--runs-dir", runs, "--seed", seed) == (
        f"Error: --seed {seed_message(seed)}")
    assert serve_error(completions, seed=seed) == f"'seed' {seed_message(seed)}"


@pytest.mark.parametrize("seed", ACCEPTED_SEEDS)
def test_every_command_accepts_the_same_seeds(seed, tmp_path, completions):
    runs = tmp_path / "runs"
    # past the seed: each stops at the run, which does not exist
    assert "nope" in command_error("sample", "nope", "--runs-dir", runs, "--seed", seed)
    assert "nope" in command_error("viz", "nope", "--sample", 5, "--runs-dir", runs, "--seed", seed)
    assert serve_error(completions, seed=seed) is None


@pytest.mark.parametrize("temperature", REFUSED_TEMPERATURES)
def test_every_command_refuses_the_same_temperatures(temperature, tmp_path, completions):
    runs = tmp_path / "runs"
    expected = "must be 0 (greedy) or a positive number, got"
    assert expected in command_error("sample", "nope", "--runs-dir", runs, "--temp", temperature)
    assert expected in command_error("viz", "nope", "--sample", 5, "--runs-dir", runs, "--temp", temperature)
    message = serve_error(completions, temperature=float(temperature))
    assert message is not None and message.startswith(f"'temperature' {expected}")


def test_every_command_accepts_greedy_and_the_same_default(completions):
    from textgen.config import TEMPERATURE, VizConfig

    assert SampleConfig().temperature == VizConfig().temperature == TEMPERATURE
    assert serve_error(completions, temperature=0) is None
    parsed = completions.parse_completion({"prompt": "ab"}, {"m": Vocabulary("abc")}, ServeConfig())
    assert parsed.choices[0].temperature == TEMPERATURE
