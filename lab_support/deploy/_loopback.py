"""Keep the deployment tools on this machine: every URL they target must be a loopback address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or an address in 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback_url(url: str, *, purpose: str) -> str:
    """Return ``url`` without a trailing slash; raise ValueError unless it is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {url!r} for {purpose}: expected http://127.0.0.1:PORT")
    if not is_loopback_host(parts.hostname):
        raise ValueError(
            f"{purpose} runs only against apps on this machine, but {url!r} is not a loopback address. "
            "Start the app locally (serve_in_background(app)) and pass its url."
        )
    return url.rstrip("/")
