"""Serve a trained run over HTTP: a JSON API, a multipart form and a page to try a post.

Loads the run's Classifier once (the encoders checked as `predict` checks
them), batches concurrent requests, and answers with the probabilities
`predict` gives for the same posts. Binds 127.0.0.1 by default; another
address needs --token-file (or an explicit --no-auth). SIGTERM stops taking
requests, finishes those under way and exits 0. Needs the `serve` extra:
pip install -e '.[serve]'. API: docs/serve.md, or GET /docs once it runs.
"""

import signal
import socket

from pipeline.config import add_config_arguments, config_from_args
from pipeline.errors import UserError
from pipeline.serve.config import ServeConfig, read_token

INSTALL = "pip install -e '.[serve]'"


def add_arguments(parser):
    add_config_arguments(parser, ServeConfig)


def run(args):
    config = config_from_args(ServeConfig, args)  # a bad flag fails before any model loads
    try:
        import uvicorn

        from pipeline.serve.app import create_app
        from pipeline.serve.batcher import model_thread
    except ModuleNotFoundError as error:
        raise UserError(f"serve needs {error.name}, which is not installed; install the serve extra: "
                        f"{INSTALL}") from None
    from pipeline.predict.classifier import Classifier

    token = read_token(config.token_file) if config.token_file else None
    thread = model_thread()  # loads the model and runs it: one OpenMP team (batcher.py)
    classifier = thread.submit(
        Classifier.from_run, config.run, device=config.device, threshold=config.threshold,
        text_model=config.text_model, clip_model=config.clip_model, clip_lora=config.clip_lora,
        batch_size=config.max_batch, max_pixels=config.max_pixels).result()
    app = create_app(classifier, config, token, thread)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=config.request_timeout_s + 5))
    shown = f"[{host}]" if ":" in host else host
    print(f"serving run {classifier.run_dir.name} on http://{shown}:{port}/ (page at /, API docs at /docs"
          f"{', token required' if token else ''})", flush=True)
    with signals_end_quietly():
        server.run(sockets=[sock])
    counters = app.app_state.counters
    print(f"stopped: {counters.answered} of {counters.started} predict requests answered", flush=True)
    return 0


def bind(host, port):
    """A listening socket on host:port (port 0: a free one), so the address printed is the real one.

    Made with proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
    TCP, and without it each answer's body waited for the client's delayed ACK of its headers (about 40 ms
    per request on Linux; GET /healthz took 45 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); pick another "
                        "port (or 0 for any free one)") from None
    sock.listen(2048)
    return sock


class signals_end_quietly:
    """uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again; with these handlers in
    place that second signal is ignored, so a graceful stop exits 0 instead of dying of the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, lambda *_: None) for sig in self.SIGNALS}

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
