"""What `arbiter serve` was asked to do: the models, the address, the limits.

Plain data, built by the CLI (``app/cli/serve.py``) and read by the app factory, so a test
or a script can build a server without argparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.scorer import WINDOW_AGG

#: defaults, in the units named; the CLI's help repeats them
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH_ITEMS = 32  # items per scorer call, gathered across requests
DEFAULT_MAX_WAIT_MS = 5.0  # how long the first waiting item waits for company, milliseconds
DEFAULT_MAX_QUEUE = 1024  # items waiting per model before new requests get 429
DEFAULT_MAX_ITEMS_PER_REQUEST = 512  # texts / documents / responses in one request
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024  # request body, bytes (413 above it)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One ``--model``: the name requests use for it, and how to open it."""

    name: str  # what clients send as "model" (the spec as given: "default", a name, a path)
    spec: str  # what engine.load opens
    load_options: dict = field(default_factory=dict)  # device, threads, max_length, format
    length_control: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs; the first model is the one a request without "model" gets."""

    models: tuple[ModelSpec, ...]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: the API key itself (read from the environment variable the user named); None: no auth
    api_key: str | None = field(default=None, repr=False)  # never printed, never logged
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_items_per_request: int = DEFAULT_MAX_ITEMS_PER_REQUEST
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    batch_size: int | None = None  # items per forward pass (None: the model's default)
    cors_origins: tuple[str, ...] = ()  # no CORS headers at all unless origins are named
    #: thresholds.json files for /v1/moderations, each applied to the served model whose sha256
    #: it names; a model without one gets the defaults (app.moderate.thresholds)
    moderation_thresholds: tuple[str, ...] = ()
    #: a response longer than a model's context: "error" (422 ``input_too_long``, the default) or
    #: "window" (scored in overlapping windows and combined by ``window_agg``, as ``arbiter score
    #: --on-too-long window`` does; cross-encoders only). ``/get_reward`` never windows: it scores
    #: the rendered text a trainer sent, which must fit.
    on_too_long: str = "error"
    window_agg: str = WINDOW_AGG
