"""The running backend that notebooks use: where it is, what it runs on, how to stop it."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lab_support._procs import stop_process

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0


@dataclass
class Backend:
    """A local model served over the OpenAI-compatible protocol.

        >>> with start_backend() as backend:
        ...     client = backend.client()
        ...     client.chat.completions.create(model=backend.model, messages=[...])

    ``started`` says whether this process started the engine; only then does
    ``stop()`` stop it, so reusing someone's Ollama never shuts it down.
    """

    engine: str
    device: str
    device_detail: str
    base_url: str
    model: str
    started: bool
    log_path: Path | None = None
    pid: int | None = None
    command: tuple[str, ...] = ()
    startup_s: float | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def root_url(self) -> str:
        """The server's address without the ``/v1`` suffix."""
        return self.base_url.removesuffix("/v1")

    def is_healthy(self) -> bool:
        """Return whether the server lists the model at ``GET /v1/models`` within two seconds.

        NOTE: llama.cpp's server answers only between requests, because its
        model lock is held for a whole answer, so a long stream makes this False.
        """
        try:
            response = httpx.get(f"{self.base_url}/models", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        return self.model in {entry.get("id") for entry in response.json().get("data", [])}

    def client(self, **options):
        """Return an ``openai.OpenAI`` client for this backend (local engines need no key)."""
        import openai

        options.setdefault("api_key", "local-engine-needs-no-key")
        return openai.OpenAI(base_url=self.base_url, **options)

    def stop(self) -> None:
        """Stop the engine if this process started it; otherwise leave it running."""
        if self._process is None:
            logger.info("leaving %s at %s running: this process did not start it", self.engine, self.base_url)
            return
        stop_process(self._process)
        logger.info("stopped %s (pid %s) at %s", self.engine, self.pid, self.base_url)
        self._process = None

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
