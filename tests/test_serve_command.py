"""The `textgen serve` command: clean shutdown on SIGTERM and SIGINT with streams in flight (on a
run whose characters take 2-4 bytes of UTF-8), and its one-line errors."""

from __future__ import annotations

import json
import signal
import socket

import httpx
import pytest
from conftest import describe, invoke, train_run
from serve_process import Server

MULTIBYTE_TEXT = "h\u00e9llo w\u00f6rld, \u6f22\u5b57 \U0001f642 ok\n" * 130  # 2-, 3- and 4-byte characters


@pytest.fixture(scope="module")
def multibyte_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("multibyte")
    corpus = base / "corpus.txt"
    corpus.write_text(MULTIBYTE_TEXT, encoding="utf-8")
    return train_run(base, corpus, "multi")


@pytest.fixture(scope="module")
def doomed_servers(multibyte_run, trained_run):
    """Two servers, started side by side, one for each signal; the first serves two runs."""
    options = ["--max-batch", "2", "--max-tokens", "1000000"]
    servers = {signal.SIGTERM: Server(multibyte_run, trained_run, *options),
               signal.SIGINT: Server(multibyte_run, *options)}
    for server in servers.values():
        server.wait_ready()
    yield servers
    for server in servers.values():
        server.stop()


def test_several_runs_are_served_by_name(doomed_servers):
    url = doomed_servers[signal.SIGTERM].url
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["textgen"]["vocab_size"]) for m in models] == [("multi", 15), ("tiny", 11)]
    for model, prompt in (("multi", "\u6f22"), ("tiny", "the")):
        reply = httpx.post(f"{url}/v1/completions", timeout=60,
                           json={"model": model, "prompt": prompt, "max_tokens": 40, "seed": 1}).json()
        assert len(reply["choices"][0]["text"]) == 40 and reply["model"] == model
    wrong = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "\u6f22"}, timeout=60)
    assert wrong.status_code == 400 and "never saw" in wrong.json()["error"]["message"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_streams_cleanly_and_the_server_exits_0(doomed_servers, sig):
    server = doomed_servers[sig]
    body = {"model": "multi", "prompt": "h\u00e9llo ", "max_tokens": 1_000_000, "stream": True, "n": 2}
    raw = bytearray()
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        parts = response.iter_raw()
        for part in parts:
            raw += part
            if raw.count(b"\n\n") >= 6:
                break
        server.process.send_signal(sig)
        for part in parts:  # the server ends the stream by itself
            raw += part
    assert server.process.wait(timeout=60) == 0
    text = raw.decode("utf-8")  # strict: no character was cut
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted((c["index"], c["finish_reason"]) for c in finals) == [(0, "abort"), (1, "abort")]
    generated = "".join(c["choices"][0]["text"] for c in chunks)
    assert set(generated) <= set(MULTIBYTE_TEXT)
    # the generated text itself has 2-, 3- and 4-byte characters (4: outside the BMP), whole
    assert {len(ch.encode("utf-8")) for ch in generated} >= {2, 3, 4}, generated
    assert len(generated) > 100
    log = "".join(server.stderr)
    assert "Traceback" not in log and "WARNING" not in log and "stopped" in log
    with pytest.raises(httpx.ConnectError):  # nothing listens any more
        httpx.get(f"{server.url}/healthz", timeout=5)


def test_a_busy_port_and_bad_limits_are_one_line_errors(trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke("serve", trained_run, "--port", port)
    assert result.exit_code == 2, describe(result)
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}:")
    assert "--port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for options, message in ((["--max-batch", "0"], "--max-batch must be at least 1"),
                             (["--max-tokens", "0"], "--max-tokens must be at least 1"),
                             (["--allow-host", "http://example.com"], "--allow-host takes a host name"),
                             (["--allow-host", "example.com:80"], "--allow-host takes a host name"),
                             (["--allow-origin", "example.com"], "--allow-origin takes an origin"),
                             (["--allow-origin", "https://a.example/x"], "--allow-origin takes an origin"),
                             (["--api-key", ""], "the API key (--api-key or TEXTGEN_API_KEY) must be")):
        result = invoke("serve", trained_run, *options)
        assert result.exit_code == 2 and message in result.stderr, describe(result)
        assert len(result.stderr.strip().splitlines()) == 1
    # beyond loopback without a key: a warning first (192.0.2.1 is a documentation address: the
    # listen then fails, so nothing is opened to a network here)
    result = invoke("serve", trained_run, "--host", "192.0.2.1")
    assert result.exit_code == 2 and result.stderr.startswith(
        "Warning: serving on 192.0.2.1, beyond this machine, with no API key"), describe(result)
    assert "cannot listen on 192.0.2.1:8000" in result.stderr
    result = invoke("serve", trained_run, "--host", "192.0.2.1", env={"TEXTGEN_API_KEY": "k"})
    assert result.exit_code == 2 and result.stderr.startswith("Error: cannot listen"), describe(result)
    result = invoke("serve", "no-such-run", "--runs-dir", trained_run.parent)
    assert result.exit_code == 2 and result.stderr.startswith("Error:"), describe(result)
    result = invoke("serve", trained_run, trained_run, "--port", "0")
    assert result.exit_code == 2 and "two runs are named 'tiny'" in result.stderr, describe(result)
