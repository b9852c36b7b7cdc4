"""`serve`'s settings, without torch or FastAPI: flags and `--help` are built from these."""

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import device_name, existing, help_field, number, validate, whole
from pipeline.data.images import DEFAULT_MAX_PIXELS
from pipeline.predict.config import parse_threshold


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and 'localhost': addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass(frozen=True)
class ServeConfig:
    """How a run folder's classifier is served over HTTP."""

    run: str = help_field("run folder of train-head or finetune-e2e (with head/ and encoders.json)")
    host: str = help_field("address to bind; anything but loopback needs --token-file (or an explicit --no-auth)",
                           default="127.0.0.1")
    port: int = help_field("TCP port (0: any free port; the address is printed once the server listens)",
                           default=8000)
    token_file: str = help_field("file holding a bearer token; requests must send 'Authorization: Bearer <token>'",
                                 default=None)
    no_auth: bool = help_field("allow a non-loopback --host without a token (anyone who reaches it may use it)",
                               default=False)
    max_batch: int = help_field("posts scored together at most (concurrent requests are batched)", default=64)
    max_wait_ms: float = help_field("how long a post waits for others to fill its batch, at most", default=5.0)
    max_body_mb: float = help_field("request bodies above this are refused (413)", default=16.0)
    max_posts: int = help_field("posts per request at most (413 above)", default=256)
    max_concurrency: int = help_field("requests being answered at once at most; more get 503 with Retry-After",
                                      default=64)
    request_timeout_s: float = help_field("a request not answered in this time gets 503", default=30.0)
    threshold: str = help_field("'run' (the run's decision threshold, as predict's default), 'tuned' (its "
                                "validation-tuned one) or a number in [0, 1]", default="run")
    text_model: str = help_field("the run's text model, if it moved (default: the path the run recorded)",
                                 default=None)
    clip_model: str = help_field("the run's image model folder, if it moved", default=None, aliases=("--image-model",))
    clip_lora: str = help_field("the run's image model checkpoint, if it moved", default=None,
                                aliases=("--image-lora",))
    device: str = help_field("auto, cpu, cuda or cuda:N", default="auto")
    max_pixels: int = help_field("images with more pixels are that post's too_many_pixels, never decoded",
                                 default=DEFAULT_MAX_PIXELS)

    def __post_init__(self):
        validate(
            existing(self, "run"), existing(self, "token_file", kind="path"), existing(self, "text_model"),
            existing(self, "clip_model"), existing(self, "clip_lora", kind="path"),
            None if parse_threshold(self.threshold) is not None else
            f"--threshold {self.threshold!r}: not a threshold; use 'run', 'tuned' or a number from 0 to 1",
            device_name(self), self._auth_problem(),
            None if isinstance(self.port, int) and 0 <= self.port <= 65535 else
            f"--port {self.port!r}: not a TCP port; use a number from 0 to 65535",
            *(whole(self, name, 1) for name in ("max_batch", "max_posts", "max_concurrency", "max_pixels")),
            number(self, "max_wait_ms", at_least=0), number(self, "max_body_mb", above=0),
            number(self, "request_timeout_s", above=0),
        )

    def _auth_problem(self):
        if self.token_file is not None and self.no_auth:
            return "--no-auth with --token-file: give one of them"
        if self.token_file is None and not self.no_auth and not is_loopback(self.host):
            return (f"--host {self.host}: not a loopback address, so other machines could use the model; give "
                    "--token-file FILE (a secret only your clients know), or --no-auth if that is what you want")
        if self.token_file is not None and Path(self.token_file).is_file() and not read_token(self.token_file):
            return f"--token-file {self.token_file}: the file is empty; write a secret token into it"
        return None


def read_token(path):
    """The token in `path`: its first line, without surrounding white space."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return text.splitlines()[0].strip() if text.strip() else ""
