"""Show a secret without revealing it: ``sk-p...Qx7a``."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import SecretStr

# Shorter values are masked completely, so at most 40 % of a secret is ever shown.
MIN_LENGTH_TO_SHOW_ENDS = 20
SHOWN_CHARS = 4
MASK = "****"


def mask_secret(value: str | SecretStr) -> str:
    """Return the first and last 4 characters joined by ``...``, or ``****`` for values under 20 characters."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    if len(text) < MIN_LENGTH_TO_SHOW_ENDS:
        return MASK
    return f"{text[:SHOWN_CHARS]}...{text[-SHOWN_CHARS:]}"


def secret_values(secrets: Iterable[str | SecretStr | None]) -> list[str]:
    """Return the plain values of ``secrets``, skipping None and empty values."""
    values = []
    for secret in secrets:
        if secret is None:
            continue
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)
        if text:
            values.append(text)
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with its masked form."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, mask_secret(secret))
    return text


def as_secret(value: object) -> SecretStr | None:
    """Return ``value`` as a SecretStr: a str, a SecretStr, or any object with ``get_secret_value()``."""
    if value is None or isinstance(value, SecretStr):
        return value
    getter = getattr(value, "get_secret_value", None)
    if callable(getter):
        return SecretStr(str(getter()))
    if isinstance(value, str):
        return SecretStr(value)
    raise TypeError(f"invalid API key of type {type(value).__name__}: pass a str or a pydantic SecretStr")
