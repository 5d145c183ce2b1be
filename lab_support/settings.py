"""Settings for the labs, read in one place from ``LAB_*`` variables and ``.env``.

    >>> from lab_support.settings import get_settings
    >>> get_settings().model
    'smollm2-135m-instruct-q4_1'

Secrets are ``SecretStr`` fields, so their repr, ``str()`` and any log line
that formats the settings show ``'**********'`` instead of the value.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENGINES = ("auto", "ollama", "llama.cpp")
DEVICES = ("auto", "gpu", "cpu")

# The model every lab uses, pinned by exact name and quantisation. The same
# name is served by both engines, so client code never changes with the engine.
PINNED_MODEL = "smollm2-135m-instruct-q4_1"


def _default_state_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "serving-lab"


class LabSettings(BaseSettings):
    """Every setting of the labs; each field is read from ``LAB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LAB_", env_file=".env", extra="ignore")

    engine: str = "auto"
    device: str = "auto"
    model: str = PINNED_MODEL
    model_path: Path | None = Field(
        default=None, description="A GGUF file to serve instead of the bundled SmolLM2."
    )
    state_dir: Path = Field(default_factory=_default_state_dir)
    startup_timeout_s: float = 60.0
    context_size: int = 2048

    # A real hosted provider, used by the labs only when all three are set.
    hosted_base_url: str | None = None
    hosted_api_key: SecretStr | None = None
    hosted_model: str | None = None

    # The chat route.
    chat_upstream_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL (ending in /v1) that the chat route of lab 03 forwards to; "
        "unset: python -m lab_support.chat_app starts the local model.",
    )
    chat_upstream_api_key: SecretStr | None = None
    chat_model: str | None = Field(
        default=None, description="The model name to request upstream; needed with chat_upstream_base_url."
    )
    chat_connect_timeout_s: float | None = Field(
        default=None, gt=0, description="Connect timeout in seconds (unset: the route's default)."
    )
    chat_read_timeout_s: float | None = Field(
        default=None, gt=0, description="Longest wait between two reads, in seconds (unset: the route's default)."
    )
    chat_deadline_s: float | None = Field(
        default=None, gt=0, description="Seconds for a whole answer (unset: the route's default)."
    )

    # Deployment.
    readiness_timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds GET /api/ready waits for the upstream's model list; unset: 2."
    )
    readiness_cache_s: float | None = Field(
        default=None, ge=0, description="Seconds one readiness result answers later probes; unset: 1."
    )

    @field_validator("engine", "device", mode="before")
    @classmethod
    def _normalize_choice(cls, value: object, info: ValidationInfo) -> str:
        choices = ENGINES if info.field_name == "engine" else DEVICES
        normalized = str(value).strip().lower()
        if normalized not in choices:
            raise ValueError(f"choose one of: {', '.join(choices)}")
        return normalized


class SettingsError(ValueError):
    """A ``LAB_*`` variable or ``.env`` entry has an invalid value."""


@lru_cache(maxsize=1)
def get_settings() -> LabSettings:
    """Read the settings once per process; call ``get_settings.cache_clear()`` after changing the environment.

    Raises :class:`SettingsError` naming each invalid variable and its value.
    """
    try:
        return LabSettings()
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = f"LAB_{'_'.join(str(part) for part in item['loc']).upper()}"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{name}={item.get('input')!r}: {message}")
        raise SettingsError(
            "invalid settings in the environment or .env: " + "; ".join(problems) + ". Fix or unset them."
        ) from None
