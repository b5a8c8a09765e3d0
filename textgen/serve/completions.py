"""The OpenAI text-completions schema for `textgen serve`: request validation and response bodies.

Characters are the tokens: `max_tokens` counts characters, `usage` counts characters, and
`logprobs` reports each character's natural-log probability under the model (temperature 1, no
top-k/top-p: how surprised the model itself was). Parameters textgen cannot honour are refused by
name rather than ignored; their neutral values (what client libraries send by default) pass.
No TensorFlow here.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from textgen.config import INT32_MAX, TEMPERATURE, ServeConfig, check_seed, check_temperature
from textgen.errors import TextgenError
from textgen.serve.batching import Choice, Finish
from textgen.serve.batched_sampler import TOP_LOGPROBS, row_key
from textgen.vocab import start_ids

MAX_STOP = 4  # stop strings per request, as in OpenAI's API
KNOWN_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop", "stream",
    "stream_options", "logprobs", "echo", "user", "best_of", "frequency_penalty", "presence_penalty",
    "logit_bias", "suffix",
}


class RequestError(Exception):
    """A request the server refuses: answered as `{"error": {...}}` with `status`.

    Args:
        message: what is wrong and how to fix it, one line.
        status: the HTTP status (4xx for the client's mistakes).
        kind: OpenAI's error type ("invalid_request_error", "rate_limit_error", ...).
        param: the request field at fault, if one is.
    """

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = message, status, kind, param, code

    def body(self) -> dict:
        """The JSON error body."""
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Completion:
    """A validated completion request (`parse_completion`'s result).

    Attributes:
        model: the served run's name.
        prompts: the prompts, in order.
        choices: the engine's rows; `choices[i]` continues prompt `i // n` (OpenAI's order).
        stream, include_usage, echo, logprobs: how to answer.
        id, created: the response's "id" and "created".
    """

    model: str
    prompts: list[str]
    choices: list[Choice]
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def prompt_of(self, index: int) -> str:
        """The prompt choice `index` continues."""
        return self.prompts[index * len(self.prompts) // len(self.choices)]


def is_int(value) -> bool:
    """An int that is not a bool (JSON true is not 1 here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def request_field(body: dict, name: str, default, check, requirement: str):
    """body[name] (default when absent or null), refused with a 400 naming the field unless
    `check(value)`."""
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise RequestError(f"'{name}' must be {requirement}, got {value!r}"[:300], param=name)
    return value


def checked_field(body: dict, name: str, default, check):
    """body[name] (default when absent or null), refused with a 400 when the command line's own
    rule for it, `check(value, name)` (textgen.config), raises: one rule, two ways to ask."""
    value = body.get(name)
    if value is None:
        return default
    try:
        check(value, f"'{name}'")
    except TextgenError as e:
        raise RequestError(str(e)[:300], param=name) from None
    return value


def model_name(body: dict, models) -> str:
    """The served model a request names (may be left out when one is served: 400 when several
    are), 404 if none is called so."""
    name = request_field(body, "model", None, lambda v: isinstance(v, str), "a string")
    if name is None:
        if len(models) > 1:
            raise RequestError(f"'model' is required: this server serves {', '.join(models)}",
                               param="model")
        name = next(iter(models))
    if name not in models:
        raise RequestError(f"the model '{name}' does not exist; served here: {', '.join(models)} "
                           "(GET /v1/models lists them)", 404, param="model", code="model_not_found")
    return name


def parse_completion(body, models: dict, config: ServeConfig) -> Completion:
    """Validate a `POST /v1/completions` body against the served `models` ({name: vocab}).

    Raises RequestError (400 for bad fields, 404 for an unknown model).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestError(f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0])
    _refuse_unsupported(body)
    name = model_name(body, models)
    vocab = models[name]
    prompts = _prompts(body.get("prompt", ""), config, vocab)
    n = request_field(body, "n", 1, lambda v: is_int(v) and v >= 1, "an integer of at least 1")
    if n * len(prompts) > config.max_n:
        raise RequestError(f"n x prompts is {n * len(prompts)}; at most {config.max_n} choices per "
                           "request", param="n")
    max_tokens = request_field(body, "max_tokens", config.request_max_tokens,
                               lambda v: is_int(v) and 0 <= v <= config.max_tokens,
                               f"an integer from 0 to {config.max_tokens} (characters)")
    temperature = checked_field(body, "temperature", TEMPERATURE, check_temperature)
    top_p = request_field(body, "top_p", 1.0, lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]")
    top_k = request_field(body, "top_k", 0, lambda v: is_int(v) and 0 <= v <= INT32_MAX,
                          "an integer of at least 0 (0 is off)")
    seed = checked_field(body, "seed", None, check_seed)
    stop = _stop(body.get("stop"))
    logprobs = request_field(body, "logprobs", None, lambda v: is_int(v) and 0 <= v <= TOP_LOGPROBS,
                             f"an integer from 0 to {TOP_LOGPROBS}")
    echo = request_field(body, "echo", False, lambda v: isinstance(v, bool), "true or false")
    stream = request_field(body, "stream", False, lambda v: isinstance(v, bool), "true or false")
    options = request_field(body, "stream_options", {}, lambda v: isinstance(v, dict) and set(v) <= {"include_usage"}
                            and isinstance(v.get("include_usage", False), bool), '{"include_usage": true|false}')
    if options and not stream:
        raise RequestError("'stream_options' is only allowed with 'stream': true", param="stream_options")
    choices = []
    for index in range(len(prompts) * n):
        ids, _ = start_ids(vocab, prompts[index // n])
        choices.append(Choice(index, ids, max_tokens, row_key(seed, index), float(temperature),
                              int(top_k), float(top_p), stop, logprobs or 0,
                              score_prompt=echo and logprobs is not None))
    return Completion(name, prompts, choices, stream, bool(options.get("include_usage")), echo, logprobs)


def _refuse_unsupported(body: dict) -> None:
    """400 for parameters textgen does not implement, unless they hold their neutral value."""
    neutral = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "suffix": ("",),
               "logit_bias": ({},)}
    for name, values in neutral.items():
        if body.get(name) is not None and body[name] not in values:
            raise RequestError(f"'{name}' is not supported by textgen serve; leave it out", param=name)
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise RequestError("'best_of' is not supported by textgen serve; use 'n'", param="best_of")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError("'user' must be a string", param="user")


def _prompts(prompt, config: ServeConfig, vocab) -> list[str]:
    """The request's prompts (a string or a list of strings), each checked against the limits
    and the vocabulary."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        raise RequestError("'prompt' must be a string or a non-empty list of strings (token ids "
                           "are not accepted: send text)", param="prompt")
    for text in prompts:
        if len(text) > config.max_prompt:
            raise RequestError(f"the prompt has {len(text):,} characters; at most {config.max_prompt:,} "
                               "are accepted", param="prompt", code="context_length_exceeded")
        refuse_unknown_chars(text, vocab, "prompt")
    return prompts


def refuse_unknown_chars(text: str, vocab, field: str) -> None:
    """A 400 naming the characters of request field `field` that `vocab` lacks (the first 20)."""
    unknown = vocab.unknown_chars(text)
    if unknown:
        shown = " ".join(repr(ch) for ch in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise RequestError(f"the {field} has characters the model never saw: {shown}{more}; "
                           "remove them", param=field)


def _stop(stop) -> tuple[str, ...]:
    """Stop strings: a string or a list of up to MAX_STOP non-empty strings."""
    stops = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not (isinstance(stops, list) and len(stops) <= MAX_STOP and all(isinstance(s, str) for s in stops)):
        raise RequestError(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    return tuple(s for s in stops if s)


class ChoiceText:
    """The text, logprobs and finish reason of one choice, built from engine events.

    Args:
        index: the choice's index in the response.
        prompt: the prompt it continues (echoed first when `echo`).
        echo: whether the text starts with the prompt.
        logprobs: the request's `logprobs` (None: no log-probabilities are kept).

    Example:
        >>> text = ChoiceText(0, "the", echo=False, logprobs=None)
        >>> text.add(Piece(0, " cat", [-1.0, -2.0, -0.5, -0.1]))["text"]
        ' cat'
    """

    def __init__(self, index: int, prompt: str, echo: bool, logprobs: int | None):
        self.index, self.text, self.reason, self.generated = index, "", None, 0
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top: list[dict | None] = []
        self.logprobs = logprobs
        if echo and prompt:
            self.text = prompt[0] if logprobs is not None else prompt
            self._log(prompt[:1], [None], None if logprobs is None else [None])

    def add(self, event) -> dict:
        """Apply a Piece or Finish; returns the choice object of this event (for streaming)."""
        if isinstance(event, Finish):
            self.reason = event.reason
            return self.choice_object("", None, event.reason)
        start = len(self.text)
        self.text += event.text
        self.generated += 0 if event.prompt else len(event.text)
        self._log(event.text, event.logprobs, event.top)
        return self.choice_object(event.text, self._logprobs_from(start), None)

    def opening(self) -> dict | None:
        """The choice object of the echoed prompt known before generation starts, if any."""
        return self.choice_object(self.text, self._logprobs_from(0), None) if self.text else None

    def _log(self, text: str, logprobs: list, top) -> None:
        if self.logprobs is not None:
            self.tokens += list(text)
            self.token_logprobs += logprobs
            self.top += top if top is not None else [None] * len(text)

    def _logprobs_from(self, start: int) -> dict | None:
        """OpenAI's legacy logprobs object for the text from offset `start` on."""
        if self.logprobs is None:
            return None
        first = len(self.tokens) - (len(self.text) - start)
        return {"tokens": self.tokens[first:], "token_logprobs": self.token_logprobs[first:],
                "top_logprobs": self.top[first:] if self.logprobs else None,
                "text_offset": list(range(start, len(self.text)))}

    def choice_object(self, text: str, logprobs: dict | None, reason: str | None) -> dict:
        """One entry of a response's "choices"."""
        return {"text": text, "index": self.index, "logprobs": logprobs, "finish_reason": reason}

    def final(self) -> dict:
        """The whole choice, for a non-streaming response."""
        return self.choice_object(self.text, self._logprobs_from(0), self.reason)


def usage(request: Completion, texts: list[ChoiceText]) -> dict:
    """Characters in, characters out (each prompt counted once, as OpenAI counts tokens)."""
    prompt = sum(len(p) for p in request.prompts)
    completion = sum(t.generated for t in texts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def envelope(request: Completion, choices: list[dict], **extra) -> dict:
    """A response or stream chunk around `choices`."""
    return {"id": request.id, "object": "text_completion", "created": request.created,
            "model": request.model, "choices": choices, **extra}
