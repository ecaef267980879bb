"""What the two Gradio apps share: command-line flags, model loading into a per-app store, messages, launching.

Nothing here touches the network or the file system at import time; gradio itself is imported only when an app is
built (:func:`import_gradio`), with Gradio's usage analytics off unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise.
Apps listen on 127.0.0.1 by default and open a public share link only with ``--share``.
"""

from __future__ import annotations

import argparse
import html
import os
import platform
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from dual_attention.errors import AppError
from dual_attention.training.cli_support import one_line

__all__ = [
    "KNOWN_HUB_MODELS",
    "AppError",
    "ModelStore",
    "AppBase",
    "import_gradio",
    "default_device",
    "machine_info",
    "describe_model",
    "message",
    "escape_markdown",
    "build_arg_parser",
    "parse_app_args",
    "port_problem",
    "launch",
    "serve",
]

#: the published checkpoints (offered as examples; downloaded only when the user loads one)
KNOWN_HUB_MODELS = (
    "awni00/DAT-sa8-ra8-ns1024-sh8-nkvh4-343M",
    "awni00/DAT-sa16-ra16-nr128-ns2048-sh16-nkvh8-1.27B",
    "awni00/T-sa24-757M",
)


def import_gradio():
    """Import gradio (analytics off by default) or raise an ImportError that says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("the dual_attention apps need gradio: pip install 'dual_attention[apps]'") from None
    return gr


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_info(device: str) -> str:
    """One markdown line: device, GPU, CPU count and memory (memory only when psutil is installed)."""
    parts = [f"device `{device}`", f"torch {torch.__version__}", f"{os.cpu_count()} CPUs"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        parts.insert(1, f"GPU {torch.cuda.get_device_name(torch.device(device))}")
    try:
        import psutil

        parts.append(f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM")
    except ImportError:
        pass
    parts.append(f"Python {platform.python_version()}")
    return " · ".join(parts)


def escape_markdown(text: str) -> str:
    """Escape HTML and the markdown characters a path or an error message may contain (``_``, ``*``, ...)."""
    text = html.escape(text, quote=False)
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+!|~" else ch for ch in text)


def message(text: str, kind: str = "info") -> str:
    """Markdown for a status area: ``kind`` is ``info``, ``ok``, ``warning`` or ``error`` (prefixed in bold)."""
    prefix = {"error": "**Error:** ", "warning": "**Warning:** "}.get(kind, "")
    return prefix + escape_markdown(text)


def describe_model(loaded: Any, device: str) -> str:
    """A one-paragraph description of a loaded model for the status area."""
    model = loaded.model
    name = type(model).__name__.removesuffix("_HFHub")
    n_params = sum(p.numel() for p in model.parameters())
    parts = [f"{name} from {loaded.source}"]
    if hasattr(model, "n_heads_ra"):
        parts.append(f"{model.n_layers} layers, {model.n_heads_sa} SA + {model.n_heads_ra} RA heads")
    elif hasattr(model, "n_layers"):
        parts.append(f"{model.n_layers} layers, {getattr(model, 'n_heads', '?')} heads")
    if hasattr(model, "d_model"):
        parts.append(f"d_model {model.d_model}")
    if hasattr(model, "block_size"):
        parts.append(f"context {model.block_size} tokens")
    tok = loaded.tokenizer
    if hasattr(model, "vocab_size"):
        parts.append(f"vocabulary {model.vocab_size}" + (f" ({tok.name} tokenizer)" if tok is not None else ""))
    parts.append(f"{n_params / 1e6:.2f}M parameters on {device}")
    return "Loaded " + ", ".join(parts) + "."


class ModelStore:
    """Models loaded by an app, by the text the user typed; shared by the app's sessions (thread-safe).

    The lock only guards the two dictionaries: a load (which may download and retry for long) runs outside it,
    so other users keep generating with loaded models. Concurrent loads of the same key share one load (a
    :class:`concurrent.futures.Future` per key in flight).
    """

    def __init__(self, device: str, loader: Callable[..., Any] | None = None) -> None:
        self.device = device
        self._loader = loader
        self._models: dict[str, Any] = {}
        self._loading: dict[str, Future] = {}
        self._lock = threading.Lock()

    def _load_uncached(self, key: str) -> Any:
        if self._loader is not None:
            return self._loader(key, device=self.device)
        from dual_attention.model_analysis.text import load_for_analysis

        return load_for_analysis(key, device=self.device)

    def _get_or_load(self, key: str) -> Any:
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                return loaded
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            return future.result()  # another session is loading this key: wait for it only
        try:
            loaded = self._load_uncached(key)
        except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
            error = AppError(f"could not load {key!r}: {one_line(e)}")
            with self._lock:
                del self._loading[key]
            future.set_exception(error)
            raise error from None
        with self._lock:
            del self._loading[key]
        future.set_result(loaded)
        return loaded

    def load(self, source: str | None, family: str = "lm") -> tuple[str, Any]:
        """Load ``source`` (cached) and check it is a ``family`` model with a tokenizer; ``(key, LoadedModel)``.

        Raises :class:`AppError` with a readable message for every failure (wrong path, not a dual_attention
        checkpoint, corrupted file, Hub unreachable, wrong model family, no tokenizer).
        """
        key = (source or "").strip()
        if not key:
            raise AppError("enter a local checkpoint directory or a Hugging Face Hub id (owner/name)")
        loaded = self._get_or_load(key)
        if loaded.family != family:
            name = type(loaded.model).__name__.removesuffix("_HFHub")
            raise AppError(f"{key!r} is a {loaded.family} model ({name}); this app needs a language model "
                           "(DualAttnTransformerLM or TransformerLM)")
        if loaded.tokenizer is None:
            raise AppError(f"{key!r} has no tokenizer.json and its vocabulary ({loaded.model.vocab_size}) does not "
                           "identify a tokenizer")
        with self._lock:
            self._models[key] = loaded
        return key, loaded

    def get(self, key: str | None) -> Any:
        """The loaded model for ``key``, or AppError asking the user to load one."""
        with self._lock:
            loaded = self._models.get(key or "")
        if loaded is None:
            raise AppError("no model loaded: enter a checkpoint and click Load model")
        return loaded


class AppBase:
    """What both apps start from: gradio, a model store on the device and the model named on the command line
    (loaded now; a failure becomes the status text). Subclasses add the page and its event handlers."""

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        self.gr = import_gradio()
        self.store = ModelStore(device or default_device())
        self.initial_source = model
        self.initial_key, self.initial = None, None
        self.initial_status = message("enter a checkpoint directory or Hub id and click Load model")
        if model:
            self.initial_key, self.initial_status, self.initial = self.load_status(model, None)

    @property
    def device(self) -> str:
        return self.store.device

    def load_status(self, source: str | None, current_key: str | None) -> tuple[str | None, str, Any]:
        """Load ``source``: ``(key, status, LoadedModel)``; on failure ``(current_key, error message, None)``."""
        try:
            key, loaded = self.store.load(source)
        except AppError as e:
            return current_key, message(str(e), "error"), None
        return key, message(describe_model(loaded, self.device), "ok"), loaded

    def model_panel(self) -> tuple[Any, Any, Any]:
        """The checkpoint box, the published checkpoints, the Load button and the status area;
        ``(checkpoint box, Load button, status)``."""
        gr = self.gr
        model_box = gr.Textbox(value=self.initial_source or "",
                               label="Checkpoint (local directory or Hub id owner/name)", elem_id="model-path")
        gr.Examples([[m] for m in KNOWN_HUB_MODELS], inputs=[model_box], label="Published checkpoints")
        load_btn = gr.Button("Load model", elem_id="load-button")
        return model_box, load_btn, gr.Markdown(self.initial_status, elem_id="model-status")

    def machine_info(self, extra: str = "") -> None:
        """The footer line: device, GPU, CPUs, memory (and ``extra``)."""
        self.gr.Markdown(machine_info(self.device) + extra, elem_id="machine-info")


def build_arg_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags both apps take: --model, --host, --port, --share, --device (errors: one line, exit 2)."""
    from dual_attention.training.cli_support import Parser

    p = Parser(prog=prog, description=description)
    p.add_argument("--model", help="checkpoint to load at start: a local directory or a Hub id (owner/name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    return p


def port_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on ``host:port`` (out of range, in use, no such address), or None."""
    if not 1 <= port <= 65535:
        return f"--port must be in 1..65535, got {port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return f"--host {host!r} is not an address of this machine ({e.strerror or e})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(address)
        except OSError as e:
            return f"cannot listen on {host}:{port}: {e.strerror or e} (another app? pick another --port)"
    return None


def parse_app_args(prog: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check an app's flags before anything is built: a port in use or an unavailable device is one
    line on stderr and exit status 2."""
    from dual_attention.training.config import ConfigError
    from dual_attention.training.distributed import resolve_device

    parser = build_arg_parser(prog, description)
    args = parser.parse_args(argv)
    if args.port is not None and (problem := port_problem(args.host, args.port)):
        parser.error(problem)
    if args.device is not None:
        try:
            args.device = str(resolve_device(args.device, "--device"))
        except ConfigError as e:
            parser.error(str(e))
    return args


def launch(app: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True) -> Any:
    """Queue and launch a built app (``share`` only when asked); returns what ``Blocks.launch`` returns.

    A server that cannot start (the port was taken meanwhile, no free port) exits with one line on stderr.
    """
    gr = import_gradio()
    app.queue(default_concurrency_limit=4)
    try:
        return app.launch(server_name=host, server_port=port, share=bool(share), prevent_thread_lock=not block,
                          theme=gr.themes.Soft(), ssr_mode=False, quiet=not block)
    except OSError as e:
        sys.stderr.write(f"error: cannot start the app on {host}:{port or 'a free port'}: {one_line(e)}\n")
        raise SystemExit(2) from None


def serve(prog: str, title: str, build: Callable[[str | None, str | None], Any], argv: list[str] | None = None,
          setup: Callable[[], None] | None = None) -> int:
    """An app's ``main``: parse and check the flags, run ``setup``, build the app with ``--model``/``--device`` and
    launch it (blocking); 0."""
    args = parse_app_args(prog, title, argv)
    if setup is not None:
        setup()
    launch(build(args.model, args.device), args.host, args.port, args.share)
    return 0
