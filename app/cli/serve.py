"""`arbiter serve`: serve reward models over HTTP (OpenRLHF, rerank, classify, Arbiter's own).

Everything that can be wrong with the command line (a non-loopback --host without a key, an
unset key variable, a model that does not open) is an error with exit code 2 *before* a
socket is bound. The app itself is :mod:`app.serve.app`; FastAPI and uvicorn are imported
only here, inside the command, so the rest of the CLI runs without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import math
import sys

from app.cli.common import add_model_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from app.serve.settings import (
        DEFAULT_HOST,
        DEFAULT_MAX_BATCH_ITEMS,
        DEFAULT_MAX_ITEMS_PER_REQUEST,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_MAX_WAIT_MS,
        DEFAULT_PORT,
    )
    from engine.scorer import WINDOW_AGG, WINDOW_AGGS

    p = sub.add_parser("serve", help="serve reward models over HTTP (OpenRLHF /get_reward, rerank, ...)",
                       conflict_handler="resolve")
    add_model_options(p)
    p.add_argument("--model", "-m", action="append", default=None, metavar="MODEL",
                   help="registered name, path, or 'default'; repeat to serve several (requests name "
                        "one in their 'model' field; without it they get the first). Default: default")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}); any non-loopback address "
                        "needs --api-key-env")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, printed at start)")
    p.add_argument("--api-key-env", metavar="VAR", default=None,
                   help="name of the environment variable holding the API key; clients then send "
                        "'Authorization: Bearer <key>' (the key is never logged)")
    p.add_argument("--max-batch-items", type=positive_int, default=DEFAULT_MAX_BATCH_ITEMS, metavar="N",
                   help=f"items per scorer call, gathered across requests (default {DEFAULT_MAX_BATCH_ITEMS})")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS, metavar="T",
                   help=f"how long a waiting item waits for others to batch with, ms (default "
                        f"{DEFAULT_MAX_WAIT_MS:g})")
    p.add_argument("--max-queue", type=positive_int, default=DEFAULT_MAX_QUEUE, metavar="Q",
                   help=f"items waiting per model before new requests get 429 (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-items-per-request", type=positive_int, default=DEFAULT_MAX_ITEMS_PER_REQUEST,
                   metavar="N", help=f"texts/documents/responses in one request (default "
                                     f"{DEFAULT_MAX_ITEMS_PER_REQUEST}; more: 413)")
    p.add_argument("--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES,
                   metavar="B", help=f"request body size limit, bytes (default {DEFAULT_MAX_REQUEST_BYTES}; "
                                     "more: 413)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="items per forward pass (default: the model's)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browsers from this origin (repeatable); no CORS headers without it")
    p.add_argument("--moderation-thresholds", action="append", default=None, metavar="FILE",
                   help="thresholds.json (arbiter moderate calibrate) for /v1/moderations; it applies "
                        "to the served model whose sha256 it records (repeat for several models); "
                        "default: the built-in thresholds")
    p.add_argument("--on-too-long", choices=["error", "window"], default="error",
                   help="a response longer than a model's context: a 422 input_too_long (default), or "
                        "scored in overlapping windows, each score saying how many (cross-encoders; "
                        "/get_reward's rendered texts must still fit)")
    p.add_argument("--window-agg", choices=list(WINDOW_AGGS), default=WINDOW_AGG,
                   help=f"with --on-too-long window: how the windows' scores make one (default {WINDOW_AGG})")
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace):
    """The server's settings; the bind rule and the key are checked here, before anything loads."""
    from app.serve.security import check_bind, read_api_key
    from app.serve.settings import ModelSpec, Settings
    from engine.errors import InputError

    if not math.isfinite(args.max_wait_ms) or args.max_wait_ms < 0:
        raise InputError(f"must be a number of milliseconds, 0 or more; got {args.max_wait_ms:g}",
                         field="--max-wait-ms")
    if not 0 <= args.port <= 65535:
        raise InputError(f"must be a TCP port (0-65535), got {args.port}", field="--port")
    key = read_api_key(args.api_key_env)
    check_bind(args.host, key)
    specs = args.model or ["default"]
    if len(set(specs)) != len(specs):
        raise InputError(f"a model is named twice ({', '.join(specs)})", field="--model")
    options = {"device": args.device, "threads": args.threads, "max_length": args.max_length,
               "format": args.model_format}
    return Settings(
        models=tuple(ModelSpec(s, s, dict(options), args.length_control) for s in specs),
        host=args.host, port=args.port, api_key=key, max_batch_items=args.max_batch_items,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_items_per_request=args.max_items_per_request, max_request_bytes=args.max_request_bytes,
        batch_size=args.batch_size, cors_origins=tuple(args.cors_origin or ()),
        moderation_thresholds=tuple(args.moderation_thresholds or ()),
        on_too_long=args.on_too_long, window_agg=args.window_agg)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import uvicorn

        from app.serve.app import create_app, load_models
    except ImportError as e:
        print(f"arbiter: error: `arbiter serve` needs the serve extra ({e}): pip install 'arbiter[serve]'",
              file=sys.stderr)
        return 2
    scorers = load_models(settings)  # a model that does not open: exit 2, nothing bound
    app = create_app(settings, scorers)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on",
                            access_log=bool(getattr(args, "verbose", False)),
                            log_level="info" if getattr(args, "verbose", False) else "warning",
                            timeout_graceful_shutdown=None)
    # uvicorn.Server.run() installs its own SIGTERM/SIGINT handlers in the main thread (replacing
    # main.py's, which would raise mid-request): it stops accepting, lets in-flight requests finish,
    # runs the app's shutdown, restores main.py's handler and re-raises the signal, which main.py
    # turns into exit code 143 (tests/test_serve.py checks all of it)
    server = _make_server(config, settings)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when it cannot bind; it has logged why (address in use, ...)
        if server.started:
            raise
        print(f"arbiter: error: could not listen on {settings.host}:{settings.port} (the reason is above)",
              file=sys.stderr)
        return 2
    return 0


def _make_server(config, settings):
    """uvicorn's Server, announcing the address it actually bound (``--port 0`` included)."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                _announce(self, settings)

    return AnnouncingServer(config)


def _announce(server, settings) -> None:
    host, port = settings.host, settings.port
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    auth = "bearer key required" if settings.api_key else "no key (loopback only)"
    print(f"arbiter serve: listening on http://{shown}:{port} ({', '.join(m.name for m in settings.models)}; "
          f"{auth})", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `arbiter serve`")
