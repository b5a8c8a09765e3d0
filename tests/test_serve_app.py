"""`textgen serve` end to end: a real server process on 127.0.0.1 hit by real HTTP clients (the
official `openai` package, httpx) and by headless Chromium, and shut down by real signals.

One server serves the session's tiny run for most tests (started once per module); two more, on a
run whose vocabulary has multi-byte characters, are stopped with SIGTERM and SIGINT mid-stream.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import (CHROMIUM, CHROMIUM_ARGS, SPAN_BOX, assert_card_beside, chromium_env_without_cjk,
                      han_to_latin_width)
from serve_process import Server

MAX_BATCH = 8
MAX_QUEUE = 40
MAX_PROMPT = 300
MAX_TOKENS = 10**6
CHUNK = 64  # ServeConfig.chunk


@pytest.fixture(scope="module")
def server(trained_run):
    srv = Server(trained_run, "--max-batch", MAX_BATCH, "--max-queue", MAX_QUEUE, "--max-prompt", MAX_PROMPT,
                 "--max-tokens", MAX_TOKENS)
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def url(server):
    return server.url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def complete(url, body, timeout=60) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)


def metrics(url) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def wait_idle(url, timeout=15.0):
    """Until no row is generating or waiting; the last metrics."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if m['textgen_batch_size{model="tiny"}'] == 0 and m['textgen_queue_length{model="tiny"}'] == 0:
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.02)


def sse_payloads(lines) -> list:
    """The `data:` payloads of an event stream (JSON-decoded, except the final [DONE])."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def test_models_health_and_metrics(url, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    info = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
    assert info["object"] == "model" and info["textgen"]["vocab_size"] == 11
    assert info["textgen"]["units"] == 16 and info["textgen"]["layers"] == 1
    assert info["textgen"]["max_trace"] == 8192  # the playground checks a text against it before tracing
    assert httpx.get(f"{url}/v1/models/tiny", timeout=10).json()["id"] == "tiny"
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok", "models": ["tiny"]}
    m = metrics(url)
    assert m['textgen_batch_slots{model="tiny"}'] == MAX_BATCH
    for name in ("textgen_characters_generated_total", "textgen_batch_size", "textgen_queue_length"):
        assert f'{name}{{model="tiny"}}' in m


def test_completion_through_the_openai_client(url, client, trained_run):
    vocab = set(json.loads((trained_run / "vocab.json").read_text(encoding="utf-8"))["chars"])
    result = client.completions.create(model="tiny", prompt="the ", max_tokens=50, seed=1, temperature=0.8)
    text = result.choices[0].text
    assert len(text) == 50 and set(text) <= vocab
    assert result.choices[0].finish_reason == "length" and result.object == "text_completion"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 50, 54)
    raw = complete(url, {"model": "tiny", "prompt": "the ", "max_tokens": 50, "seed": 1, "temperature": 0.8})
    assert raw.status_code == 200 and raw.json()["choices"][0]["text"] == text
    # model may be left out when one run is served; greedy decoding needs no seed
    greedy = [complete(url, {"prompt": "the ", "max_tokens": 30, "temperature": 0}).json() for _ in range(2)]
    assert greedy[0]["choices"][0]["text"] == greedy[1]["choices"][0]["text"]


def test_streaming_gives_the_same_text_in_openai_chunks(url, client):
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 150, "seed": 5}
    whole = client.completions.create(**body).choices[0].text
    pieces = list(client.completions.create(**body, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole
    assert pieces[-1].choices[0].finish_reason == "length"
    assert len(pieces) >= 3  # it streamed in several chunks
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(response.iter_lines())
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 150, "total_tokens": 157}
    assert all(p["object"] == "text_completion" and p["model"] == "tiny" for p in payloads[:-1])
    assert "".join(c["text"] for p in payloads[:-2] for c in p["choices"]) == whole


def test_n_choices_and_stop_strings(url, client):
    result = client.completions.create(model="tiny", prompt="the ", max_tokens=80, n=3, seed=2)
    texts = [c.text for c in sorted(result.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(result.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert len(set(texts)) == 3 and all(len(t) == 80 for t in texts)
    assert result.usage.completion_tokens == 240
    single = client.completions.create(model="tiny", prompt="the ", max_tokens=80, seed=2)
    assert single.choices[0].text == texts[0]  # choice 0 of a seed is the seed's text
    stop = texts[0][40:43]
    stopped = client.completions.create(model="tiny", prompt="the ", max_tokens=80, seed=2,
                                        stop=["zz", stop])
    assert stopped.choices[0].text == texts[0][:texts[0].find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="the ", max_tokens=80, seed=2, stop=stop,
                                         stream=True)
    assert "".join(p.choices[0].text for p in streamed) == stopped.choices[0].text
    batch = client.completions.create(model="tiny", prompt=["the ", "a cat"], max_tokens=20, n=2, seed=4)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens == 9


def test_a_seed_gives_the_same_text_alone_and_in_a_busy_batch(url):
    target = {"prompt": "the mat", "max_tokens": 300, "seed": 42, "temperature": 0.9, "top_k": 5,
              "top_p": 0.95}
    alone = complete(url, target).json()["choices"][0]["text"]
    others = [{"prompt": "a", "max_tokens": 200 + 37 * i, "seed": i, "temperature": 0.3 * i,
               "stream": i % 2 == 0} for i in range(7)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(complete, url, body) for body in others[:4]]
        time.sleep(0.05)  # the target joins a batch that is already running
        mine = pool.submit(complete, url, target)
        futures += [pool.submit(complete, url, body) for body in others[4:]]
        assert all(f.result().status_code == 200 for f in futures)
        assert mine.result().json()["choices"][0]["text"] == alone
    assert len(alone) == 300


def test_echo_and_logprobs(url):
    body = {"prompt": "the cat", "max_tokens": 20, "seed": 3, "echo": True, "logprobs": 2}
    choice = complete(url, body).json()["choices"][0]
    text, logprobs = choice["text"], choice["logprobs"]
    assert text.startswith("the cat") and len(text) == 27
    assert logprobs["tokens"] == list(text) and logprobs["text_offset"] == list(range(27))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    for top, token, lp in zip(logprobs["top_logprobs"][1:], logprobs["tokens"][1:],
                              logprobs["token_logprobs"][1:]):
        assert len(top) == 2 and max(top.values()) >= lp - 1e-6
        if token in top:
            assert abs(top[token] - lp) < 1e-5
    plain = complete(url, {"prompt": "the cat", "max_tokens": 20, "seed": 3}).json()["choices"][0]["text"]
    assert text == "the cat" + plain
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={**body, "stream": True, "logprobs": 0}) as response:
        payloads = sse_payloads(response.iter_lines())[:-1]
    streamed = [c for p in payloads for c in p["choices"]]
    assert "".join(c["text"] for c in streamed) == text
    assert [lp for c in streamed if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]][1:] == \
        pytest.approx(logprobs["token_logprobs"][1:], abs=1e-5)


ERRORS = [
    ({"model": "nope", "prompt": "the"}, 404, "'nope' does not exist"),
    ({"prompt": "the cat \u00a9 \U0001f600"}, 400, "never saw: '\u00a9' '\U0001f600'"),
    ({"prompt": "a" * (MAX_PROMPT + 1)}, 400, f"at most {MAX_PROMPT}"),
    ({"prompt": "a", "max_tokens": MAX_TOKENS + 1}, 400, "'max_tokens' must be an integer from 0"),
    ({"prompt": "a", "max_tokens": "10"}, 400, "'max_tokens' must be"),
    ({"prompt": "a", "temperature": -0.5}, 400, "'temperature' must be 0 (greedy) or a positive number, got -0.5"),
    ({"prompt": "a", "seed": -1}, 400, "'seed' must be an integer from 0 to 2147483647, got -1"),
    ({"prompt": "a", "top_p": 0}, 400, "'top_p' must be"),
    ({"prompt": "a", "top_k": -1}, 400, "'top_k' must be"),
    ({"prompt": "a", "n": 17}, 400, "at most 16 choices"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "'stop' must be"),
    ({"prompt": [1, 2, 3]}, 400, "token ids are not accepted"),
    ({"prompt": "a", "frobnicate": 1}, 400, "unrecognized request argument(s): frobnicate"),
    ({"prompt": "a", "presence_penalty": 0.5}, 400, "'presence_penalty' is not supported"),
    ({"prompt": "a", "stream_options": {"include_usage": True}}, 400, "only allowed with 'stream'"),
    ([1, 2], 400, "must be a JSON object"),
    (b'{"prompt": "the', 400, "not valid JSON"),
    (b"[" * 100_000, 400, "not valid JSON"),
    (b" " * ((1 << 20) + 1), 413, "larger than"),
]


@pytest.mark.parametrize("body,status,fragment", ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_bad_requests_get_json_errors(url, body, status, fragment):
    if isinstance(body, bytes):
        response = httpx.post(f"{url}/v1/completions", content=body, timeout=30,
                              headers={"content-type": "application/json"})
    else:
        response = complete(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_errors_reach_the_openai_client_and_leave_the_server_up(url, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="missing", prompt="the")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="the", temperature=-1)
    for method, path, status in (("GET", "/v1/completions", 405), ("GET", "/nowhere", 404)):
        response = httpx.request(method, f"{url}{path}", timeout=10)
        assert response.status_code == status and "error" in response.json()
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def trace(url, body) -> httpx.Response:
    return httpx.post(f"{url}/v1/trace", json=body, timeout=60)


def test_trace_gives_the_cell_values_of_the_models_own_step(url, trained_run):
    import tensorflow as tf

    from textgen.inference import load_run

    text = "the cat sat on the mat\nthe mat sat on the cat"
    loaded = load_run(str(trained_run), trained_run.parent)
    model, states, weights = loaded.model, loaded.model.initial_state(1), loaded.model.step_weights()
    expected = {"c": [], "h": []}
    for char_id in loaded.vocab.encode(text):  # the sampler's path, one character at a time
        _, states = model.step(tf.constant([char_id]), states, weights)
        expected["h"].append(states[0][0].numpy()[0])
        expected["c"].append(states[0][1].numpy()[0])
    for quantity, unit in (("c", 5), ("h", 11)):
        body = trace(url, {"model": "tiny", "text": text, "layer": 0, "unit": unit, "quantity": quantity}).json()
        assert (body["object"], body["layer"], body["unit"], body["quantity"]) == ("textgen.trace", 0, unit, quantity)
        want = [state[unit] for state in expected[quantity]]
        assert body["values"] == pytest.approx(want, abs=1e-4)
        assert body["scale"] == pytest.approx(max(abs(v) for v in want), abs=1e-4)
    # no unit: the best-ranked cell of the quantity; the ranking is by |r|, strongest feature first
    body = trace(url, {"text": text}).json()
    cells = body["cells"]
    best_c = next(c for c in cells if c["quantity"] == "c")
    assert (body["layer"], body["unit"], body["quantity"]) == (best_c["layer"], best_c["unit"], "c")
    assert {"feature", "layer", "unit", "quantity", "r"} <= set(cells[0]) and "word start" in {c["feature"] for c in cells}
    firsts = [c for i, c in enumerate(cells) if i == 0 or cells[i - 1]["feature"] != c["feature"]]
    assert [abs(c["r"]) for c in firsts] == sorted((abs(c["r"]) for c in firsts), reverse=True)


TRACE_ERRORS = [
    ({"model": "nope", "text": "the"}, 404, "'nope' does not exist"),
    ({"text": ""}, 400, "'text' is empty"),
    ({"text": "a" * 8193}, 400, "at most 8,192 are traced"),
    ({"text": "the \u00a9"}, 400, "never saw: '\u00a9'"),
    ({"text": "the", "layer": 1}, 400, "'layer' must be an integer from 0 to 0"),
    ({"text": "the", "unit": 16}, 400, "'unit' must be an integer from 0 to 15"),
    ({"text": "the", "unit": True}, 400, "'unit' must be"),
    ({"text": "the", "quantity": "x"}, 400, "'quantity' must be one of 'i'"),
    ({"text": "the", "prompt": "a"}, 400, "unrecognized request argument(s): prompt"),
    (["the"], 400, "must be a JSON object"),
]


@pytest.mark.parametrize("body,status,fragment", TRACE_ERRORS, ids=[e[2][:30] for e in TRACE_ERRORS])
def test_bad_trace_requests_get_json_errors(url, body, status, fragment):
    response = trace(url, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


def open_stream(url, body):
    """A streaming request left open: (client, response, iterator over its lines)."""
    http = httpx.Client(timeout=60)
    response = http.send(http.build_request("POST", f"{url}/v1/completions", json={**body, "stream": True}),
                         stream=True)
    assert response.status_code == 200
    return http, response, response.iter_lines()


def test_a_client_that_disconnects_stops_costing_compute(url):
    wait_idle(url)
    http, response, lines = open_stream(url, {"prompt": "the", "max_tokens": MAX_TOKENS})
    events = [line for _, line in zip(range(6), lines)]
    assert sum(line.startswith("data: ") for line in events) >= 3
    assert metrics(url)['textgen_batch_size{model="tiny"}'] == 1
    response.close()
    http.close()
    before = wait_idle(url, timeout=5)  # the row left (one chunk takes milliseconds here)
    time.sleep(0.3)
    after = metrics(url)
    key = 'textgen_characters_generated_total{model="tiny"}'
    assert after[key] == before[key]
    assert after['textgen_chunks_total{model="tiny"}'] == before['textgen_chunks_total{model="tiny"}']


def test_an_n_choice_request_whose_client_leaves_after_one_choice_ends_and_holds_nothing(url):
    """n = 9 on 8 slots: choices 0-7 finish together, then choice 8 runs alone; the client leaves
    then. The request must end (it used to wait forever for a finish reported twice)."""
    per_choice = 100_000
    before = wait_idle(url)
    key = 'textgen_characters_generated_total{model="tiny"}'
    body = json.dumps({"prompt": "the", "max_tokens": per_choice, "n": 9}).encode()
    port = int(url.rsplit(":", 1)[1])
    # a raw socket: the one client that can walk away from a non-streaming request mid-answer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body))
        deadline = time.monotonic() + 120
        while True:  # until choices 0-7 have finished and choice 8 is generating
            m = metrics(url)
            if m[key] - before[key] >= 8 * per_choice and m['textgen_batch_size{model="tiny"}'] == 1:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.01)
        assert m["textgen_responses_waiting"] == 1
    after = wait_idle(url)  # choice 8 left the batch
    assert after[key] - before[key] < 9 * per_choice  # it left unfinished: the client had gone
    deadline = time.monotonic() + 10
    while metrics(url)["textgen_responses_waiting"] != 0:  # and the request itself ended
        assert time.monotonic() < deadline, "the request still waits for its choices"
        time.sleep(0.05)


def test_pages_of_other_sites_and_other_host_names_are_refused(url):
    """Any page can POST text/plain to 127.0.0.1, and DNS rebinding gives it a name of its own
    for it: neither gets an answer, and neither costs compute."""
    port = url.rsplit(":", 1)[1]
    key = 'textgen_characters_generated_total{model="tiny"}'
    before = wait_idle(url)
    body = '{"prompt": "the", "max_tokens": 500}'
    cases = [  # (headers, status, code)
        ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"Content-Type": "application/json", "Origin": "null"}, 403, "origin_not_allowed"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Host": f"attacker.example:{port}"}, 421, "host_not_allowed"),
        ({"Content-Type": "application/json", "Host": f"127.0.0.1:{int(port) + 1}"}, 421, "host_not_allowed"),
        ({"Content-Type": "application/json", "Host": "127.0.0.1"}, 421, "host_not_allowed"),
    ]
    for headers, status, code in cases:
        response = httpx.post(f"{url}/v1/completions", content=body, headers=headers, timeout=30)
        assert response.status_code == status, (headers, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == code and len(response.text.splitlines()) == 1
    for path in ("/v1/models", "/metrics", "/"):
        response = httpx.get(f"{url}{path}", headers={"Host": f"rebound.example:{port}"}, timeout=10)
        assert response.status_code == 421, path
    assert metrics(url)[key] == before[key]  # nothing was generated for them
    # this server's own names and origin are answered
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        response = httpx.post(f"{url}/v1/completions", content=body, timeout=30,
                              headers={"Content-Type": "application/json; charset=utf-8", "Host": host,
                                       "Origin": f"http://{host}"})
        assert response.status_code == 200, (host, response.text)
        assert len(response.json()["choices"][0]["text"]) == 500


def test_a_full_queue_is_refused_with_429(url):
    wait_idle(url)
    streams = [open_stream(url, {"prompt": "the", "max_tokens": MAX_TOKENS, "n": 16})]
    try:
        next(streams[0][2])  # its 16 rows are generating
        streams += [open_stream(url, {"prompt": "the", "max_tokens": MAX_TOKENS, "n": 16}) for _ in range(2)]
        m = metrics(url)  # 8 rows generate, 40 wait: one more would pass the limit of 40
        assert m['textgen_batch_size{model="tiny"}'] == MAX_BATCH
        assert m['textgen_queue_length{model="tiny"}'] == MAX_QUEUE
        response = complete(url, {"prompt": "the"})
        assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"
        assert "busy" in response.json()["error"]["message"]
    finally:
        for http, response, _ in streams:
            response.close()
            http.close()
    wait_idle(url)
    assert complete(url, {"prompt": "the", "max_tokens": 5}).status_code == 200


def test_32_concurrent_clients_all_complete_in_shared_chunks(url):
    before = wait_idle(url)
    bodies = [{"prompt": "the ", "max_tokens": 300, "seed": i, "stream": i % 2 == 0} for i in range(32)]
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda body: stream_or_post(url, body), bodies))
    assert time.monotonic() - start < 120
    assert [len(text) for text, _ in responses] == [300] * 32
    assert {reason for _, reason in responses} == {"length"}
    chunks = metrics(url)['textgen_chunks_total{model="tiny"}'] - before['textgen_chunks_total{model="tiny"}']
    one_by_one = 32 * -(-(300 + 3) // CHUNK)  # chunks if every request had run alone
    assert chunks <= one_by_one / 2, (chunks, one_by_one)  # 8 slots: about 1/8 when they all overlap


def stream_or_post(url, body) -> tuple[str, str]:
    """(text, finish_reason) of a completion, streamed or not."""
    if not body["stream"]:
        choice = complete(url, body, timeout=120).json()["choices"][0]
        return choice["text"], choice["finish_reason"]
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        payloads = sse_payloads(response.iter_lines())
    assert payloads[-1] == "[DONE]"
    choices = [c for p in payloads[:-1] for c in p["choices"]]
    return "".join(c["text"] for c in choices), choices[-1]["finish_reason"]


# The test holds the completion stream: the page's fetch of /v1/completions passes one network chunk
# per unit of `window.__credit` (Infinity: unpaced) and waits, polling, while it is 0; an abort (Stop)
# ends the wait. So no step of a browser test races a fast model.
PACED_FETCH = """
window.__credit = Infinity;
const realFetch = window.fetch;
window.fetch = async (input, init) => {
  const response = await realFetch(input, init);
  if (!String(input).endsWith("/v1/completions") || !response.body) return response;
  const reader = response.body.getReader(), signal = init && init.signal;
  const body = new ReadableStream({
    async pull(controller) {
      while (window.__credit <= 0) {
        if (signal && signal.aborted) {
          reader.cancel().catch(() => {});
          controller.error(new DOMException("The user aborted a request.", "AbortError"));
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      window.__credit -= 1;
      try {
        const { value, done } = await reader.read();
        if (done) controller.close(); else controller.enqueue(value);
      } catch (error) { controller.error(error); }
    },
    cancel(reason) { return reader.cancel(reason); },
  });
  return new Response(body, { status: response.status, headers: response.headers });
};
"""
HELD = ("window.__credit === 0 && document.querySelector('#output').textContent.length > 0"
        " && !document.querySelector('#stop').disabled")
COLOURED = "document.querySelector('#status').textContent.startsWith('coloured by')"
CARD_VALUES = "tds => Object.fromEntries(tds.map(td => [td.dataset.q, Number(td.textContent)]))"


def open_playground(browser, url, errors, **options):
    """The playground in a new page of `browser`, its runs listed, its stream held by the test."""
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(PACED_FETCH)
    page.goto(f"{url}/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    return page


def span_looks(page) -> list:
    return page.eval_on_selector_all("#output span", f"s => s.map({SPAN_BOX})")


def test_the_playground_streams_coloured_text_in_a_browser(url, tmp_path):
    from playwright.sync_api import sync_playwright

    from textgen.viz.page import page_template

    # one renderer: the script the playground loads is the one `textgen viz` inlines
    assert httpx.get(f"{url}/assets/render.js", timeout=10).text in page_template()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_playground(browser, url, errors)
            assert page.input_value("#model") == "tiny"
            assert "1 \u00d7 16 LSTM" in page.text_content("#model-info")
            assert page.is_hidden("#cell-controls")  # layer and unit do nothing for surprisal
            legend = " ".join(page.inner_text("#legend").split())
            assert legend.startswith("surprisal: 0 \u2265 10 bits"), legend  # the viz page's scale
            page.fill("#prompt", "the cat ")
            page.fill("#seed", "7")  # the same texts, and so the same ranked cells, every time
            page.fill("#length", "20000")
            page.evaluate("window.__credit = 2")  # two network chunks, then the stream waits
            page.click("#generate")
            early = page.wait_for_function(
                f"{HELD} ? document.querySelector('#output').textContent.length : 0").json_value()
            page.evaluate("window.__credit = Infinity")
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=60_000)
            final = page.text_content("#output")
            assert early < len(final) == len("the cat ") + 20000  # it grew while running, then stopped
            assert final.startswith("the cat ") and "(finished: length)" in page.text_content("#status")
            # every character but the first is coloured by its surprisal: redder for more bits,
            # white at 0, the darkest red from 10 bits on (the viz page's scale)
            looks = span_looks(page)[:2000]
            logprobs = page.eval_on_selector_all(
                "#output span", "s => s.slice(0, 2000).map(x => x.lp ?? null)")
            assert logprobs[0] is None and None not in logprobs[1:]
            greens = sorted((-lp / math.log(2), look[2][1]) for lp, look in zip(logprobs[1:], looks[1:]))
            assert [g for _, g in greens] == sorted((g for _, g in greens), reverse=True)
            assert all(look[2] == [215, 48, 39] for lp, look in zip(logprobs[1:], looks[1:])
                       if -lp / math.log(2) >= 10)
            # the hover card: surprisal, the likeliest next characters, beside the line, not on it
            page.hover("#output span:nth-child(12)")
            card = page.inner_text("#card")
            bits = -logprobs[11] / math.log(2)
            assert f"surprise: {bits:.2f} bits" in card and "next character:" in card, card
            assert page.locator("#card .guess").count() == 3
            assert_card_beside(page, "#card", "#output span:nth-child(12)")
            page.screenshot(path=str(tmp_path / "playground.png"))
            # Stop ends a long generation, and the server frees its row
            page.fill("#length", str(MAX_TOKENS))
            page.evaluate("window.__credit = 3")
            page.click("#generate")
            page.wait_for_function(HELD)
            page.click("#stop")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")
            wait_idle(url)
            page.evaluate("window.__credit = Infinity")  # unpaced from here on
            # colouring by a cell: once the text is complete, the page traces it (POST /v1/trace)
            page.select_option("#colour-by", "cell")
            assert page.is_visible("#cell-controls") and page.is_hidden("#legend")
            page.fill("#length", "1500")
            page.click("#generate")
            page.wait_for_function(COLOURED, timeout=60_000)
            text = page.text_content("#output")
            first = span_looks(page)
            assert len(first) == len(text) == len("the cat ") + 1500
            assert len({tuple(look[2]) for look in first}) > 10  # shaded by value, not one colour
            assert page.locator("#cells li").count() >= 3 and not page.is_hidden("#cell-legend")
            unit = int(page.input_value("#cell-unit"))
            reference = trace(url, {"model": "tiny", "text": text, "layer": 0, "unit": unit}).json()
            # one convention on both pages: positive values red, negative blue
            strong = [t for t, v in enumerate(reference["values"]) if abs(v) > 0.25 * reference["scale"]]
            assert len(strong) > 20
            for t in strong:
                red, _, blue = first[t][2]
                assert (red > blue) == (reference["values"][t] > 0), (t, reference["values"][t], first[t])
            # the card holds the chosen unit's gates and state at the hovered character
            page.hover("#output span:nth-child(40)")
            assert f"layer 0 \u00b7 unit {unit}" in page.inner_text("#card")
            shown = page.eval_on_selector_all("#card td", CARD_VALUES)
            assert set(shown) == {"i", "f", "g", "o", "c", "h"}
            for q, value in shown.items():
                assert value == pytest.approx(reference["unit_values"][q][39], abs=6e-4), q
            assert_card_beside(page, "#card", "#output span:nth-child(40)")
            page.screenshot(path=str(tmp_path / "playground-cell.png"))
            # the ranked cells as the server ranks them: buttons for those that follow a feature,
            # "no unit follows it" once for each feature that none does
            cells = reference["cells"]
            assert page.locator("#cells button").count() == len([c for c in cells if c["follows"]])
            weak = {c["feature"] for c in cells if not c["follows"]}
            assert page.locator("#cells li.none").count() == len(weak)
            assert all("no unit follows it" in item for item in page.locator("#cells li.none").all_inner_texts())
            page.evaluate("document.querySelector('#status').textContent = ''")
            page.fill("#cell-unit", str((unit + 1) % 16))  # another cell
            page.dispatch_event("#cell-unit", "change")
            page.wait_for_function(COLOURED, timeout=60_000)
            second = span_looks(page)
            assert second != first and page.text_content("#output") == text
            # a failed trace request (no layer 3 in a 1-layer run) leaves no cells of the last one
            page.fill("#cell-layer", "3")
            page.dispatch_event("#cell-layer", "change")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('Error')")
            assert page.locator("#cells li").count() == 0 and page.is_hidden("#cell-legend")
            refused = "Failed to load resource: the server responded with a status of 400 (Bad Request)"
            errors.remove(refused)  # the browser logs the refused request itself: the only error allowed
            page.fill("#cell-layer", "0")
            page.select_option("#colour-by", "surprisal")  # back: the surprisal shading returns
            assert page.is_hidden("#cell-controls")
            back = span_looks(page)
            assert back[0][2] == [0, 0, 0] and all(look[2] != [0, 0, 0] for look in back[1:])
        finally:
            browser.close()
    assert errors == []
    assert (tmp_path / "playground.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def two_runs_url(trained_run, chinese_run):
    """A server with two runs: the Chinese one first, then the session's English one."""
    srv = Server(chinese_run, trained_run, "--max-tokens", 5000, "--max-batch", 1)  # one loop to compile
    try:  # stopped even when it does not start in time
        srv.wait_ready()
        yield srv.url
    finally:
        srv.stop()


def test_the_playground_draws_chinese_and_forgets_cells_of_another_run(two_runs_url, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    prompt = "\u4e2d\u56fd\u4eba\u8bf4\uff1a\u300c"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_playground(browser, two_runs_url, errors)
            assert page.input_value("#model") == "han"
            page.fill("#prompt", prompt)
            page.fill("#length", "400")
            page.select_option("#colour-by", "cell")
            page.click("#generate")
            page.wait_for_function(COLOURED, timeout=60_000)
            assert page.is_hidden("#font-hint")  # tests/setup-browser.sh installed a CJK font
            assert han_to_latin_width(page, "#output") > 1.4  # glyphs, not boxes
            cells = page.locator("#cells li").all_inner_texts()
            assert cells and not any(c.startswith("word start") for c in cells)  # no spaces in Chinese
            assert all("no unit follows it" in c for c in cells if "r = " not in c)
            page.hover("#output span:nth-child(20)")
            assert_card_beside(page, "#card", "#output span:nth-child(20)")
            # another run: the cells and colours of the last one's trace go
            page.select_option("#model", "tiny")
            assert page.locator("#cells li").count() == 0 and page.is_hidden("#cell-legend")
            browser.close()
            # a Chromium that sees no CJK font: boxes, and the page says which font to install
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                 env=chromium_env_without_cjk(tmp_path))
            page = open_playground(browser, two_runs_url, errors)
            page.fill("#prompt", prompt)
            page.fill("#length", "100")
            page.click("#generate")
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=60_000)
            assert page.is_visible("#font-hint")
            hint = page.inner_text("#font-hint")
            assert "Noto Sans CJK" in hint and "apt install fonts-noto-cjk" in hint, hint
            assert han_to_latin_width(page, "#output") < 1.2
        finally:
            browser.close()
    assert errors == []
