"""`textgen serve`, a wing of its own: an OpenAI-compatible HTTP API and a playground page.

    command.py          the entry `textgen serve` calls: load runs, compile, listen (uvicorn)
    app.py              the Starlette application: routes, limits, metrics, streaming
    guard.py            who may call it: Host, Origin, API key, JSON bodies (ASGI middleware)
    request_log.py      --log-requests: one line per request
    completions.py      /v1/completions requests and responses in OpenAI's shapes
    batching.py         the engine that batches every open choice into one compiled loop
    batched_sampler.py  that compiled loop: many rows sampled side by side, chunk by chunk
    trace_api.py        /v1/trace: one cell's values over a text, for the playground's colouring
    static/             the playground page

It uses the core (model, sampler, tracer) and nothing in the core imports it.
"""
