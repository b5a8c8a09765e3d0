"""A `textgen serve` process for the tests: started on a free port, listening once it said so on
stderr, ready once it printed its URL on stdout."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time

START_TIMEOUT = 300  # seconds for a server to load, compile and listen (a busy 2-core machine)


class Server:
    """`textgen serve ... --port 0` in its own process; `url` once it printed that it is ready.
    `textgen` is `python -m textgen` of this interpreter unless another command is given (the
    packaging test's installed script), run in `cwd`; `env`: variables set in the environment (a
    value of None removes that variable)."""

    def __init__(self, *args, textgen: list[str] | None = None, cwd=None, env: dict | None = None):
        textgen = textgen or [sys.executable, "-m", "textgen"]
        command = [*textgen, "serve", *map(str, args), "--port", "0"]
        environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", cwd=cwd, env=environment)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        self.stdout, self.url = [], None

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.put(line)
        lines.put(None)

    def wait_listening(self) -> str:
        """The URL, once the process said on stderr that it listens (it compiles its runs after)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            match = re.search(r"listening at (http://127\.0\.0\.1:\d+)/", "".join(self.stderr))
            if match:
                return match.group(1)
            time.sleep(0.02)
        raise AssertionError(f"server did not listen: {''.join(self.stderr)[-3000:]}")

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while self.url is None and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.stdout.append(line)
            match = re.search(r"at (http://127\.0\.0\.1:\d+)/ ", line)
            if match:
                self.url = match.group(1)
        assert self.url, f"server did not start: {self.stdout} {''.join(self.stderr)[-3000:]}"
        return self.url

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
