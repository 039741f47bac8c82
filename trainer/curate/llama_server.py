"""llama-cpp-python's OpenAI-compatible server, safe to start on machines whose CPU kernels crash.

``python -m trainer.curate.llama_server --model GGUF --port P [--host 127.0.0.1]
[--api-key-env VAR] [--n-ctx N] [--threads T] [--alias NAME]``

``llama_cpp.server`` loads the model with the high-level ``Llama``, which has no switch for
llama.cpp's extra CPU buffers (AMX, repacked weights); on machines where they crash
(``engine.backends.gguf_probe``) it would die by signal before serving anything. This wraps
its app with the probe's decision applied to llama.cpp's default model params for the
life of the process (it serves this one model, and reloads it with the same params).

``--port 0`` binds a free port; the address actually bound is printed to stderr as
``llama_server: listening on http://HOST:PORT`` once the model is loaded. The API key is
read from the named environment variable (never from the command line, where ``ps`` shows it).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

LISTENING = "llama_server: listening on "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m trainer.curate.llama_server", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="a GGUF chat model")
    ap.add_argument("--port", type=int, default=8080, help="0: a free port (printed)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the API key clients must send")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context size (tokens)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--alias", default=None, help="the model name clients use (default: the file's stem)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.is_file():
        print(f"llama_server: error: {args.model}: no such model file", file=sys.stderr)
        return 2
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"llama_server: error: the API key variable {args.api_key_env} is not set", file=sys.stderr)
            return 2
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        print(f"llama_server: error: needs llama-cpp-python[server] (pip install 'arbiter[curate]'): {e}",
              file=sys.stderr)
        return 2
    from trainer.curate.judges import apply_extra_bufts_decision

    apply_extra_bufts_decision(args.model)  # for the process's life: it serves (and reloads) this model
    threads = args.threads or os.cpu_count() or 1
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(128)  # from here clients queue (until the model is loaded) instead of being refused
    except OSError as e:
        print(f"llama_server: error: cannot listen on {args.host}:{args.port} ({e.strerror})", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    app = create_app(
        server_settings=ServerSettings(host=host, port=port, api_key=api_key),
        model_settings=[ModelSettings(model=str(args.model), model_alias=args.alias or args.model.stem,
                                      n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads,
                                      n_gpu_layers=0, verbose=False)],
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"{LISTENING}http://{shown}:{port}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
