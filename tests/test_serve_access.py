"""`textgen serve` with its access and limit options, end to end: one real server process on
127.0.0.1, serving two runs (one with a 3-character vocabulary), started with --api-key (through
TEXTGEN_API_KEY), --allow-host, --allow-origin, --log-requests and --max-tokens 100, hit with httpx
and the official `openai` client. Its start is watched too: 503 "starting" until the runs compile.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from conftest import train_run
from serve_process import Server

KEY = "sk-test-3f9a1c"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "https://app.example"


@pytest.fixture(scope="module")
def small_vocab_run(tmp_path_factory):
    """A run whose vocabulary is 3 characters: 'a', 'b' and a newline."""
    base = tmp_path_factory.mktemp("small-vocab")
    corpus = base / "ab.txt"
    corpus.write_text("ab\nba\naab\n" * 200, encoding="utf-8")
    return train_run(base, corpus, "ab")


@pytest.fixture(scope="module")
def started(small_vocab_run, trained_run):
    """(the server, what /healthz and the API answered while it was starting)."""
    server = Server(small_vocab_run, trained_run, "--max-batch", "2", "--max-tokens", "100",
                    "--allow-host", "textgen.test", "--allow-origin", APP, "--log-requests",
                    env={"TEXTGEN_API_KEY": KEY})
    try:
        url = server.wait_listening()
        seen = []
        deadline = time.monotonic() + 180
        while not seen or seen[-1][0] != 200:  # until ready
            assert time.monotonic() < deadline, seen
            health = httpx.get(f"{url}/healthz", timeout=10)
            api = httpx.post(f"{url}/v1/completions", json={"model": "ab"}, headers=AUTH, timeout=10)
            seen.append((health.status_code, health.json()["status"], api.status_code,
                         api.json().get("error", {}).get("code")))
            time.sleep(0.05)
        assert server.wait_ready() == url
        yield server, seen
    finally:
        server.stop()


@pytest.fixture(scope="module")
def url(started):
    return started[0].url


def post(url, body, headers=AUTH, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60, **kwargs)


def test_while_the_runs_compile_healthz_and_the_api_answer_503(started):
    _, seen = started
    assert seen[0] == (503, "starting", 503, "starting"), seen  # answered at once, not left hanging
    assert seen[-1] == (200, "ok", 200, None)  # ready: the same request is served
    assert all(s[:2] == (503, "starting") for s in seen[:-1])


def test_the_api_key_is_required_on_the_api_only(url):
    body = {"model": "tiny", "prompt": "the", "max_tokens": 5}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}):
        response = post(url, body, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", headers=headers, timeout=10).status_code == 401
    assert post(url, body).status_code == 200
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # health and page stay open
    assert httpx.get(f"{url}/", timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    reply = client.completions.create(model="tiny", prompt="the", max_tokens=20, seed=1)
    assert len(reply.choices[0].text) == 20


def test_a_request_without_model_is_refused_when_several_runs_are_served(url):
    for path, body in (("/v1/completions", {"prompt": "ab"}), ("/v1/trace", {"text": "ab"})):
        response = httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=60)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "model" and "ab, tiny" in error["message"]


def test_the_default_max_tokens_is_the_smaller_limit_and_a_tiny_vocabulary_serves(url):
    reply = post(url, {"model": "ab", "prompt": "ab", "logprobs": 5, "seed": 3}).json()
    choice = reply["choices"][0]
    assert len(choice["text"]) == 100 and choice["finish_reason"] == "length"  # --max-tokens 100
    assert set(choice["text"]) <= {"a", "b", "\n"}
    tops = choice["logprobs"]["top_logprobs"]
    assert len(tops) == 100 and all(set(top) == {"a", "b", "\n"} for top in tops)  # 3, not 5
    assert post(url, {"model": "ab", "prompt": "a", "max_tokens": 101}).status_code == 400
    trace = httpx.post(f"{url}/v1/trace", json={"model": "ab", "text": "abab\n"}, headers=AUTH, timeout=60)
    assert trace.status_code == 200 and len(trace.json()["values"]) == 5


def test_allowed_host_names_and_origins(url):
    port = url.rsplit(":", 1)[1]
    body = {"model": "tiny", "prompt": "the", "max_tokens": 5}
    for host in ("textgen.test", f"textgen.test:{port}", "TEXTGEN.test:443"):  # any port
        assert post(url, body, headers={**AUTH, "Host": host}).status_code == 200, host
    for host in ("other.test", f"sub.textgen.test:{port}"):
        assert post(url, body, headers={**AUTH, "Host": host}).status_code == 421, host
    allowed = post(url, body, headers={**AUTH, "Origin": APP})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP
    preflight = httpx.options(f"{url}/v1/completions", timeout=10, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200, preflight.text
    assert {"authorization", "content-type"} <= set(
        preflight.headers["access-control-allow-headers"].lower().replace(" ", "").split(","))
    for origin in ("https://other.example", "http://app.example", f"{APP}:8443"):
        response = post(url, body, headers={**AUTH, "Origin": origin})
        assert response.status_code == 403, origin
        refused = httpx.options(f"{url}/v1/completions", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_each_request_is_logged_in_one_line(started):
    server, url = started[0], started[0].url
    post(url, {"model": "tiny", "prompt": "the", "max_tokens": 42})
    httpx.get(f"{url}/v1/models", headers={"Host": "nope.test"}, timeout=10)
    with httpx.stream("POST", f"{url}/v1/completions", headers=AUTH, timeout=60,
                      json={"model": "ab", "prompt": "a", "max_tokens": 77, "n": 2, "stream": True}) as r:
        assert r.status_code == 200 and list(r.iter_lines())[-2] == "data: [DONE]"
    line = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ %s %s %d %d chars \d+ ms"
    wanted = [line % ("POST", "/v1/completions", 200, 42), line % ("GET", "/v1/models", 421, 0),
              line % ("POST", "/v1/completions", 200, 154)]
    deadline = time.monotonic() + 10
    while True:  # a line is written as its response ends, so it may trail the client a little
        lines = "".join(server.stderr).splitlines()
        found = [any(re.fullmatch(pattern, text) for text in lines) for pattern in wanted]
        if all(found):
            break
        assert time.monotonic() < deadline, (found, lines[-20:])
        time.sleep(0.05)
    assert not any("Traceback" in text for text in lines)


def test_host_rules_of_other_bindings():
    """What a server bound elsewhere answers to (no server: binding beyond loopback is not for tests)."""
    from textgen.serve.guard import Hosts, is_loopback

    v6 = Hosts.of("::1", 8000, ())
    assert [v6.allows(h) for h in ("[::1]:8000", "localhost:8000", "[::1]:8001", "::1:8000")] == \
        [True, True, False, False]
    wildcard = Hosts.of("0.0.0.0", 8000, ("box.lan",))
    assert [wildcard.allows(h) for h in ("192.168.1.5:8000", "[fe80::1]:8000", "box.lan", "box.lan:9",
                                         "evil.example:8000", "192.168.1.5:8001")] == \
        [True, True, True, True, False, False]
    named = Hosts.of("192.168.1.5", 80, ())
    assert [named.allows(h) for h in ("192.168.1.5", "192.168.1.5:80", "10.0.0.1", "a@192.168.1.5", "")] == \
        [True, True, False, False, False]
    assert Hosts.of("127.0.0.1", 8000, ("*",)).allows("anything.example:1")
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "::",
                                     "192.168.1.5")] == [True, True, True, True, False, False, False]
