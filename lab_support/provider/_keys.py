"""API keys: issued by the provider, checked on every request, never shown whole."""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from dataclasses import dataclass

from lab_support.provider._ratelimit import RateLimits

API_KEY_PREFIX = "sk-lab-"
API_KEY_RANDOM_BYTES = 24
MASK_VISIBLE_SUFFIX = 4
DEFAULT_KEY_NAME = "default"
DEFAULT_API_KEY_VARIABLE = "OPENAI_API_KEY"


class ApiKey:
    """A bearer API key whose repr and ``str()`` show only its prefix and last characters.

    ``get_secret_value()`` returns the full key, and ``export()`` puts it into
    an environment variable without printing it.
    """

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str) -> None:
        if not name:
            raise ValueError("invalid key name '': give the key a non-empty name")
        if not value or any(character.isspace() for character in value):
            raise ValueError(f"invalid API key for {name!r}: it must be non-empty and contain no whitespace")
        self.name = name
        self._value = value

    def get_secret_value(self) -> str:
        """Return the full key, for an ``Authorization`` header or a client constructor."""
        return self._value

    @property
    def masked(self) -> str:
        """The key with all but its prefix and last characters replaced by ``...``."""
        prefix = API_KEY_PREFIX if self._value.startswith(API_KEY_PREFIX) else ""
        if len(self._value) <= len(prefix) + 2 * MASK_VISIBLE_SUFFIX:
            return prefix + "..."
        return f"{prefix}...{self._value[-MASK_VISIBLE_SUFFIX:]}"

    def export(self, variable: str = DEFAULT_API_KEY_VARIABLE) -> None:
        """Set the environment variable ``variable`` to the key, printing nothing."""
        os.environ[variable] = self._value

    def matches(self, candidate: str) -> bool:
        """Return whether ``candidate`` is this key, compared in constant time."""
        return hmac.compare_digest(candidate.encode(), self._value.encode())

    def __repr__(self) -> str:
        return f"ApiKey(name={self.name!r}, value={self.masked!r})"

    def __str__(self) -> str:
        return self.masked


@dataclass(frozen=True)
class KeyPolicy:
    """Limits of one key: its rate limits and its spending budget in USD (None: no budget)."""

    rate_limits: RateLimits
    budget_usd: float | None = None

    def __post_init__(self) -> None:
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"invalid budget_usd {self.budget_usd!r}: use an amount >= 0, or None for no budget")


@dataclass(frozen=True)
class AuthFailure:
    """Why a request has no valid key: an OpenAI error ``code`` and a message that shows no key."""

    code: str
    message: str


class KeyRing:
    """The keys the provider accepts, each with its policy; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._policies: dict[str, KeyPolicy] = {}

    def issue(self, name: str, policy: KeyPolicy) -> ApiKey:
        """Create a random key called ``name`` and accept it from now on."""
        value = API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_RANDOM_BYTES)
        return self.add(ApiKey(name, value), policy)

    def add(self, key: ApiKey, policy: KeyPolicy) -> ApiKey:
        """Accept ``key``; its name must be new and its value unused."""
        with self._lock:
            if key.name in self._keys:
                raise ValueError(f"a key named {key.name!r} already exists: pick another name")
            if any(existing.matches(key.get_secret_value()) for existing in self._keys.values()):
                raise ValueError(f"the value of key {key.name!r} is already in use by another key")
            self._keys[key.name] = key
            self._policies[key.name] = policy
        return key

    def revoke(self, key: ApiKey | str) -> None:
        """Stop accepting ``key`` (an ApiKey or its name)."""
        name = key if isinstance(key, str) else key.name
        with self._lock:
            if name not in self._keys:
                raise KeyError(f"no key named {name!r}: known keys are {sorted(self._keys)}")
            del self._keys[name]
            del self._policies[name]

    def get(self, name: str) -> ApiKey:
        """Return the key called ``name``."""
        with self._lock:
            if name not in self._keys:
                raise KeyError(f"no key named {name!r}: known keys are {list(self._keys)}")
            return self._keys[name]

    def policy(self, name: str) -> KeyPolicy:
        """Return the policy of the key called ``name``."""
        with self._lock:
            return self._policies[name]

    def names(self) -> list[str]:
        """Return the names of the accepted keys, in issue order."""
        with self._lock:
            return list(self._keys)

    def authenticate(self, authorization: str | None) -> ApiKey | AuthFailure:
        """Return the key that an ``Authorization`` header value carries, or why it fails."""
        if not authorization:
            return AuthFailure(
                code="missing_api_key",
                message=(
                    "No API key was sent. Send it as 'Authorization: Bearer <key>', "
                    "with the key from provider.api_key."
                ),
            )

        scheme, _, candidate = authorization.strip().partition(" ")
        candidate = candidate.strip()
        if scheme.lower() != "bearer" or not candidate:
            return AuthFailure(
                code="invalid_authorization_header",
                message="The Authorization header is not of the form 'Bearer <key>'. Send the key with the Bearer scheme.",
            )

        with self._lock:
            keys = list(self._keys.values())
        # Every key is compared, so the time taken does not reveal which one was close.
        matches = [key for key in keys if key.matches(candidate)]
        if not matches:
            return AuthFailure(
                code="invalid_api_key",
                message=(
                    "The API key sent is not valid for this provider: it was never issued or has been revoked. "
                    "Use provider.api_key or a key from provider.issue_key()."
                ),
            )
        return matches[0]


def key_name_of(key: object) -> str | None:
    """Return the name of ``key`` (an ApiKey or a key name), or None for None."""
    if key is None or isinstance(key, str):
        return key
    if isinstance(key, ApiKey):
        return key.name
    raise TypeError(f"invalid key {key!r}: pass an ApiKey, a key name, or None")
