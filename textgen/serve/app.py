"""`textgen serve`: the HTTP side. OpenAI-compatible completions, the playground page, health and
metrics, on Starlette and uvicorn, with one batching `Engine` per served run.

Routes: `POST /v1/completions` (JSON, or server-sent events with `"stream": true`), `GET /v1/models`,
`GET /healthz`, `GET /metrics` (Prometheus text format), `GET /` (the playground) and `/static/`,
`/assets/` (textgen's shared page renderer, `textgen/page_assets/`, which `textgen viz` inlines),
and textgen's own `POST /v1/trace` (one cell's value at every character, `textgen.serve.trace_api`).
Every error is JSON `{"error": {"message", "type", "param", "code"}}`. Requests pass the checks of
`textgen.serve.guard` (Host, Origin, API key, JSON bodies) first; while the runs compile, the API
answers 503 and /healthz `{"status": "starting"}`.

When the engines close (textgen.serve.command does so on SIGINT/SIGTERM), every open stream gets its
last text, a final chunk with finish_reason "abort" and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from textgen.serve.trace_api import parse_trace, trace_body
from textgen.serve.completions import (
    ChoiceText,
    Completion,
    RequestError,
    envelope,
    error_body,
    parse_completion,
    usage,
)
from textgen.config import ServeConfig
from textgen.serve.batching import Engine, EngineClosed, Finish, Job, QueueFull
from textgen.serve.guard import guards
from textgen.serve.request_log import RequestLog

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_DIR = Path(__file__).parent.parent / "page_assets"  # the core's shared renderer (plain data)


@dataclass
class ServedModel:
    """A run being served.

    Attributes:
        name: the run's name, the API's `model`.
        engine: its running `Engine`.
        vocab: its `Vocabulary`.
        model: its `CharLSTM` (the engine samples from it; traces read it).
        created: run.json's modification time (Unix seconds), for /v1/models.
        details: its shape and training summary, under "textgen" in /v1/models.
    """

    name: str
    engine: Engine
    vocab: object
    model: object
    created: int
    details: dict


@dataclass
class Counters:
    """The server's own counters for /metrics (the engines keep theirs), and whether it is ready
    (its runs compiled) or closing.

    Example:
        >>> counters = Counters(); counters.count(200); counters.requests
        {200: 1}
    """

    started: float = field(default_factory=time.time)
    requests: dict = field(default_factory=dict)  # HTTP status -> completion requests answered
    streams: int = 0  # streams open now
    answering: int = 0  # non-streaming completion requests being answered now
    ready: bool = True  # False while the runs compile
    closing: bool = False

    def count(self, status: int) -> None:
        """One more completion request answered with `status`."""
        self.requests[status] = self.requests.get(status, 0) + 1


def sse(payload) -> bytes:
    """One server-sent event carrying a JSON payload."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def read_json(request: Request, limit: int):
    """The request body parsed as JSON, refused (413) past `limit` bytes or (400) if malformed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is larger than {limit:,} bytes", 413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise RequestError(f"the request body is larger than {limit:,} bytes", 413)
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as e:
        raise RequestError(f"the request body is not valid JSON: {str(e)[:200]}") from None


def create_app(models: dict[str, ServedModel], config: ServeConfig, counters: Counters | None = None,
               port: int | None = None, log: Callable[[str], None] | None = None):
    """The Starlette application serving `models` (by name) under the limits of `config`.

    `port`: the port it listens on (default config.port; the real one when that is 0), which the
    Host check needs; `log`: where --log-requests lines go.
    """
    counters = counters or Counters()
    vocabs = {name: served.vocab for name, served in models.items()}
    shapes = {name: (served.details["layers"], served.details["units"], served.model.cell_kind)
              for name, served in models.items()}
    tracing = asyncio.Lock()  # one trace at a time: each holds (text x units x layers x 6) floats

    async def completions(request: Request):
        """POST /v1/completions: validate, queue the choices, answer as JSON or as events."""
        try:
            if counters.closing:
                raise RequestError("the server is shutting down", 503, "server_error")
            completion = parse_completion(await read_json(request, config.max_body_bytes), vocabs, config)
            job, queue = _submit(models[completion.model].engine, completion)
        except RequestError as e:
            counters.count(e.status)
            return JSONResponse(e.body(), e.status)
        counters.count(200)
        texts = [ChoiceText(i, completion.prompt_of(i), completion.echo, completion.logprobs)
                 for i in range(len(completion.choices))]
        request.state.characters = lambda: sum(t.generated for t in texts)  # for --log-requests
        if completion.stream:
            # the background task also covers a client gone before the first event was written
            return StreamingResponse(_stream(completion, job, queue, texts, counters),
                                     media_type="text/event-stream", background=BackgroundTask(job.cancel),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        counters.answering += 1
        try:
            return await _respond(request, completion, job, queue, texts)
        finally:
            counters.answering -= 1

    async def trace(request: Request):
        """POST /v1/trace: one cell's values over a text, and the ranked cells (textgen.serve.trace_api)."""
        try:
            parsed = parse_trace(await read_json(request, config.max_body_bytes), shapes, vocabs,
                                 config.max_trace)
        except RequestError as e:
            return JSONResponse(e.body(), e.status)
        served = models[parsed.model]
        async with tracing:  # in a worker thread: the event loop keeps streaming meanwhile
            body = await asyncio.to_thread(trace_body, served.model, served.vocab, parsed)
        return JSONResponse(body)

    async def list_models(request: Request):
        """GET /v1/models: the served runs."""
        return JSONResponse({"object": "list", "data": [_model_object(m) for m in models.values()]})

    async def get_model(request: Request):
        """GET /v1/models/{name}: one served run."""
        name = request.path_params["name"]
        if name not in models:
            body = error_body(f"the model '{name}' does not exist", "invalid_request_error", "model",
                              "model_not_found")
            return JSONResponse(body, 404)
        return JSONResponse(_model_object(models[name]))

    async def healthz(request: Request):
        """GET /healthz: 200 while serving, 503 while the runs compile and once shutting down."""
        status = "shutting down" if counters.closing else "starting" if not counters.ready else "ok"
        return JSONResponse({"status": status, "models": list(models)}, 200 if status == "ok" else 503)

    async def metrics(request: Request):
        """GET /metrics: Prometheus text."""
        return PlainTextResponse(render_metrics(models, counters), media_type="text/plain; version=0.0.4")

    async def page(request: Request):
        """GET /: the playground."""
        return FileResponse(STATIC_DIR / "playground.html")

    async def http_error(request: Request, exc: HTTPException):
        """Routing errors (404, 405) in the API's JSON error shape."""
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{exc.detail}: {request.method} {request.url.path}", kind),
                            exc.status_code, headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception):
        """An unexpected exception: a JSON 500 (the traceback goes to the server's log)."""
        return JSONResponse(error_body("internal server error; see the server's log", "server_error"), 500)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/trace", trace, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/assets", StaticFiles(directory=ASSETS_DIR), name="assets"),
    ]
    middleware = [Middleware(RequestLog, log=log)] if config.log_requests and log else []
    middleware += guards(config, config.port if port is None else port)
    middleware.append(Middleware(Starting, counters=counters))  # innermost: after the checks
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: http_error, 500: server_error})


class Starting:
    """ASGI middleware: the API answers 503 while the runs compile (the engines are not running yet)."""

    def __init__(self, app, counters: Counters):
        self.app, self.counters = app, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.counters.ready and scope["path"].startswith("/v1/"):
            body = error_body("the server is starting (compiling its runs); GET /healthz answers 200 "
                              "once it is ready", "server_error", None, "starting")
            return await JSONResponse(body, 503, headers={"Retry-After": "5"})(scope, receive, send)
        await self.app(scope, receive, send)


def _submit(engine: Engine, completion: Completion):
    """Queue the completion's rows on `engine`; returns (the job, the asyncio queue its events
    arrive on). A full queue is a 429, a closing engine a 503."""
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def sink(events: list) -> None:  # called from the engine's thread
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
            loop.call_soon_threadsafe(queue.put_nowait, events)

    job = Job(completion.choices, sink)
    try:
        engine.submit(job)
    except QueueFull as e:
        raise RequestError(str(e), 429, "rate_limit_error") from None
    except EngineClosed as e:
        raise RequestError(str(e), 503, "server_error") from None
    return job, queue


async def _events(queue: asyncio.Queue, count: int):
    """Lists of engine events until every one of the `count` choices has finished (a choice may be
    reported finished twice: by the engine, then by `_respond` when the client goes away)."""
    waiting = set(range(count))
    while waiting:
        events = await queue.get()
        waiting -= {e.index for e in events if isinstance(e, Finish)}
        yield events


async def _stream(completion: Completion, job: Job, queue, texts: list[ChoiceText], counters: Counters):
    """The server-sent events of a streamed completion, in OpenAI's chunk format.

    Starlette cancels this generator when the client disconnects; `finally` then cancels the job,
    whose rows leave the batch at the next chunk boundary.
    """
    counters.streams += 1
    try:
        opening = [t.opening() for t in texts]
        if any(opening):
            yield b"".join(sse(envelope(completion, [c])) for c in opening if c)
        async for events in _events(queue, len(texts)):
            out = []
            for event in events:
                if isinstance(event, Finish) and event.reason == "error":
                    out.append(sse(error_body("generation failed; see the server's log", "server_error")))
                out.append(sse(envelope(completion, [texts[event.index].add(event)])))
            yield b"".join(out)
        if completion.include_usage:
            yield sse(envelope(completion, [], usage=usage(completion, texts)))
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()
        counters.streams -= 1


async def _respond(request: Request, completion: Completion, job: Job, queue, texts: list[ChoiceText]):
    """The whole completion as one JSON response; a client that goes away cancels the job."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()
        queue.put_nowait([Finish(i, "cancelled") for i in range(len(texts))])

    watcher = asyncio.create_task(watch())
    try:
        async for events in _events(queue, len(texts)):
            for event in events:
                texts[event.index].add(event)
    finally:
        watcher.cancel()
    if job.cancelled:
        return JSONResponse(error_body("the client went away", "invalid_request_error"), 499)
    if any(t.reason == "error" for t in texts):
        return JSONResponse(error_body("generation failed; see the server's log", "server_error"), 500)
    return JSONResponse(envelope(completion, [t.final() for t in texts], usage=usage(completion, texts)))


def _model_object(served: ServedModel) -> dict:
    """One entry of GET /v1/models: OpenAI's fields, and the run's shape under "textgen"."""
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "textgen",
            "textgen": served.details}


def render_metrics(models: dict[str, ServedModel], counters: Counters) -> str:
    """Prometheus text exposition of the server's and engines' counters.

    Written out by hand: a handful of counters and gauges do not need a metrics library.
    """
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP textgen_{name} {help_text}", f"# TYPE textgen_{name} {kind}"])
        lines.extend(f"textgen_{name}{labels} {value}" for labels, value in samples)

    per_model = [(f'{{model="{name}"}}', served.engine) for name, served in models.items()]
    metric("requests_total", "counter", "Completion requests answered, by HTTP status.",
           [(f'{{status="{status}"}}', n) for status, n in sorted(counters.requests.items())])
    metric("streams_open", "gauge", "Streaming responses in progress.", [("", counters.streams)])
    metric("responses_waiting", "gauge", "Non-streaming completion requests being answered.",
           [("", counters.answering)])
    metric("characters_generated_total", "counter", "Characters generated (prompts not counted).",
           [(labels, e.characters) for labels, e in per_model])
    metric("batch_size", "gauge", "Rows (choices) in the batch now.",
           [(labels, e.batch_size) for labels, e in per_model])
    metric("batch_slots", "gauge", "Rows the batch can hold (--max-batch).",
           [(labels, e.max_batch) for labels, e in per_model])
    metric("queue_length", "gauge", "Rows waiting for a free slot.",
           [(labels, e.queue_length) for labels, e in per_model])
    metric("chunks_total", "counter", "Compiled-loop calls (chunks of characters for every row).",
           [(labels, e.chunks) for labels, e in per_model])
    metric("busy_seconds_total", "counter", "Seconds spent in those calls.",
           [(labels, round(e.busy_seconds, 6)) for labels, e in per_model])
    metric("uptime_seconds", "gauge", "Seconds since the server started.",
           [("", round(time.time() - counters.started, 3))])
    return "\n".join(lines) + "\n"
