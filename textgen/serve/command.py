"""The `textgen serve` command: load each run once, listen, compile its engine, serve, stop cleanly.

Binds 127.0.0.1 unless told otherwise. The socket listens from the start (a busy port fails before
the compiling does) and the server answers at once: 503 "starting" until every run's loop is
compiled (in a background thread), then it prints the URL. On SIGINT or SIGTERM the engines end
their rows at the next chunk boundary (each open stream gets a final chunk with finish_reason
"abort" and `data: [DONE]`), uvicorn waits for the responses to finish and closes the
connections, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from typing import Callable

import uvicorn

from textgen.config import ServeConfig
from textgen.errors import TextgenError
from textgen.serve.app import Counters, ServedModel, create_app
from textgen.serve.guard import is_loopback


class GracefulServer(uvicorn.Server):
    """uvicorn's server, which on SIGINT/SIGTERM first tells the engines to end their streams,
    and which returns normally after a clean shutdown (uvicorn would re-raise the signal, killing
    the process or raising KeyboardInterrupt after everything had already stopped cleanly).

    Args:
        config: uvicorn's Config.
        on_exit: called (in the signal handler) before uvicorn starts shutting down.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        """Close the engines, then let uvicorn shut down (a second Ctrl-C forces it)."""
        self.on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        """Handle SIGINT and SIGTERM while serving; restore the previous handlers after."""
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: a free one), or a one-line TextgenError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise TextgenError(f"cannot listen on {host}: {e.strerror or e}; choose another --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as e:
        sock.close()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TextgenError(f"cannot listen on {host}:{port}: {reason}; choose another --port or "
                           "--host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """http://host:port/ of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def load_models(runs: list[str], runs_dir: str, which: str, config: ServeConfig,
                warn: Callable[[str], None] | None = None) -> dict:
    """Load each run once and make its engine (not compiled, not started): {name: ServedModel}."""
    from textgen.serve.batching import Engine
    from textgen.inference import load_run

    runs_loaded = [load_run(run, runs_dir, which, warn=warn) for run in runs or [None]]
    names = [loaded.name for loaded in runs_loaded]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TextgenError(f"two runs are named {twice[0]!r}; serve one of them, or rename a run directory")
    models: dict[str, ServedModel] = {}
    for loaded in runs_loaded:
        engine = Engine(loaded.model, loaded.vocab, config.max_batch, config.chunk, config.max_queue)
        meta, shape = loaded.meta, loaded.meta["model"]
        kind = loaded.model.cell_kind  # what its cell computes, for the playground's trace choices
        details = {"cell": shape.cell, "quantities": {q: kind.quantity_names[q] for q in kind.quantities},
                   "layers": shape.num_layers, "units": shape.units,
                   "embedding_dim": shape.embedding_dim,
                   "vocab_size": shape.vocab_size, "parameters": shape.parameter_count(),
                   "steps": meta.get("step", 0), "best_val_bpc": meta.get("best_val_bpc"),
                   "checkpoint": loaded.checkpoint.name, "max_trace": config.max_trace}
        created = int((loaded.run_dir / "run.json").stat().st_mtime)
        models[loaded.name] = ServedModel(loaded.name, engine, loaded.vocab, loaded.model, created, details)
    return models


def warm_up(models: dict, counters: Counters, log: Callable[[str], None]) -> None:
    """Compile every run's loop for every batch size and start its engine; then mark the server
    ready. Stops early if the server is closing."""
    for name, served in models.items():
        if counters.closing:
            return
        log(f"{name}: compiling the generation loop for {len(served.engine.sizes)} batch sizes "
            f"(up to {served.engine.max_batch})...")
        seconds = served.engine.warm_up()
        log(f"{name}: ready in {seconds:.1f} s")
        served.engine.start()
    counters.ready = True


def serve_runs(runs: list[str], runs_dir: str, which: str, config: ServeConfig,
               echo: Callable[[str], None], log: Callable[[str], None],
               warn: Callable[[str], None] | None = None) -> None:
    """Serve `runs` over HTTP until SIGINT/SIGTERM: the entry point of `textgen serve`.

    Binds `config.host`:`config.port` (127.0.0.1 by default), loads each run's model, answers
    503 "starting" while the models compile, then serves the completions and trace API and the
    playground page (`textgen.serve.app`). On a signal, open requests finish within
    `config.shutdown_timeout` seconds.

    Args:
        runs: run names, run directories or "latest"; an empty list serves the latest run.
        runs_dir: where runs are looked up by name.
        which: the checkpoint to serve, "best" or "last".
        config: the server's settings (`textgen.config.ServeConfig`).
        echo: gets the line with the URL, once the server is ready.
        log: gets progress notes (loading, compiling, stopping) and, with --log-requests, a
            line per request.
        warn: gets warnings (e.g. a missing "best" checkpoint replaced by "last"), or None.

    Returns:
        None, once the server has stopped. Bad input raises `TextgenError` (one line).

    Example:

        serve_runs(["my-run"], "runs", "best", ServeConfig(port=8000), echo=print, log=print)
    """
    config.validate()
    if not (is_loopback(config.host) or config.api_key):
        (warn or log)(f"serving on {config.host}, beyond this machine, with no API key: anyone who "
                      "can reach the port can use it; set TEXTGEN_API_KEY to require a key")
    sock = listen(config.host, config.port)  # a busy port fails before minutes of compiling
    models = load_models(runs, runs_dir, which, config, warn)
    counters = Counters(ready=False)

    def closing() -> None:
        counters.closing = True
        for served in models.values():
            served.engine.close(timeout=0)

    app = create_app(models, config, counters, port=sock.getsockname()[1], log=log)
    uv_config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                               timeout_graceful_shutdown=config.shutdown_timeout)
    server = GracefulServer(uv_config, on_exit=closing)
    failed: list[BaseException] = []

    def start() -> None:  # in a thread: uvicorn answers (503 "starting") meanwhile
        try:
            warm_up(models, counters, log)
        except BaseException as e:  # noqa: BLE001 (re-raised by the main thread below)
            failed.append(e)
            server.should_exit = True
            return
        if counters.ready:
            echo(f"serving {', '.join(models)} at {url_of(sock)} (Ctrl-C to stop)")

    log(f"listening at {url_of(sock)}; the API answers 503 until the runs are compiled")
    compiling = threading.Thread(target=start, name="textgen-compile", daemon=True)
    compiling.start()
    try:
        server.run(sockets=[sock])
    finally:
        closing()
        compiling.join(timeout=config.shutdown_timeout)  # a compile in progress ends first
        for served in models.values():
            served.engine.close(timeout=config.shutdown_timeout)
        sock.close()
    if failed:
        raise failed[0]
    log("stopped")
