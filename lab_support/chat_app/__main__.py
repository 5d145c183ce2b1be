"""Run the chat route outside a notebook: ``python -m lab_support.chat_app``.

The upstream comes from the settings (``LAB_CHAT_UPSTREAM_BASE_URL``,
``LAB_CHAT_UPSTREAM_API_KEY``, ``LAB_CHAT_MODEL``). Without a base URL the
command starts the local model for the route, and with
``--simulated-provider`` it puts the simulated hosted provider (with its own
API key) between the route and that model.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

import uvicorn

from lab_support._net import LOOPBACK
from lab_support.chat_app._app import create_app
from lab_support.chat_app._config import RouteTimeouts
from lab_support.settings import LabSettings, get_settings

DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab_support.chat_app",
        description="Serve the lab 03 chat page and its streaming POST /api/chat route.",
    )
    parser.add_argument(
        "--host", default=LOOPBACK, help=f"address to listen on (default: {LOOPBACK}, this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--simulated-provider",
        action="store_true",
        help="when no LAB_CHAT_UPSTREAM_BASE_URL is set, put the simulated hosted provider and its API key "
        "in front of the local model",
    )
    return parser


def timeouts_from_settings(settings: LabSettings) -> RouteTimeouts:
    """Return the route's timeouts, with the route's defaults where a ``LAB_CHAT_*_S`` setting is unset."""
    configured = {
        "connect_s": settings.chat_connect_timeout_s,
        "read_s": settings.chat_read_timeout_s,
        "deadline_s": settings.chat_deadline_s,
    }
    return RouteTimeouts(**{name: seconds for name, seconds in configured.items() if seconds is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()

    with contextlib.ExitStack() as stack:
        if settings.chat_upstream_base_url:
            if not settings.chat_model:
                print(
                    "error: LAB_CHAT_UPSTREAM_BASE_URL is set but LAB_CHAT_MODEL is missing: "
                    "set it to the model name the upstream serves",
                    file=sys.stderr,
                )
                return 2
            if args.simulated_provider:
                print("note: --simulated-provider is ignored, because LAB_CHAT_UPSTREAM_BASE_URL is set")
            base_url, model, api_key = settings.chat_upstream_base_url, settings.chat_model, settings.chat_upstream_api_key
        else:
            from lab_support.backend import start_backend

            print("LAB_CHAT_UPSTREAM_BASE_URL is not set, so the route uses the local model. Starting it...")
            backend = stack.enter_context(start_backend())
            base_url, model, api_key = backend.base_url, backend.model, None
            if args.simulated_provider:
                from lab_support.provider import start_provider

                provider = stack.enter_context(start_provider(upstream=backend))
                base_url, model = provider.base_url, provider.model
                api_key = provider.api_key.get_secret_value()

        app = create_app(
            upstream_base_url=base_url, model=model, upstream_api_key=api_key, timeouts=timeouts_from_settings(settings)
        )
        print(f"Upstream: {base_url} (model {model}). Open http://{args.host}:{args.port}/ in a browser. Ctrl+C stops the route.")
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
