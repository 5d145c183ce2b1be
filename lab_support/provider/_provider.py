"""The notebook-side provider object: start, stop, keys, clients, outages."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

from lab_support._net import LOOPBACK
from lab_support.asgi import BackgroundServer, serve_in_background
from lab_support.provider._app import ProviderApp
from lab_support.provider._faults import ConnectionRefused, FaultScript
from lab_support.provider._keys import DEFAULT_API_KEY_VARIABLE, DEFAULT_KEY_NAME, ApiKey, KeyPolicy, KeyRing
from lab_support.provider._ledger import Ledger, Pricing
from lab_support.provider._payments import Charge, Payments
from lab_support.provider._ratelimit import RateLimiter, RateLimits
from lab_support.provider._state import Latency, ProviderState
from lab_support.provider._upstream import DEFAULT_UPSTREAM_TIMEOUT_S, Upstream

logger = logging.getLogger(__name__)

# A hosted-style name; requests for it go to the upstream's model.
DEFAULT_MODEL_NAME = "lab-mini-1"
DEFAULT_BASE_URL_VARIABLE = "OPENAI_BASE_URL"
OUTAGE_STOP_TIMEOUT_S = 10.0

_providers: weakref.WeakSet[Provider] = weakref.WeakSet()


class Provider:
    """A simulated hosted LLM API running on a loopback port; see ``lab_support.provider``."""

    def __init__(self, state: ProviderState, *, default_policy: KeyPolicy, host: str, port: int) -> None:
        self._state = state
        self._default_policy = default_policy
        self._host = host

        # Outages move the phase online -> going offline -> offline -> coming online -> online.
        self._condition = threading.Condition()
        self._phase = "online"
        self._stopped = False
        self._offline_holds = 0
        self._outage_seconds = 0.0
        self._next_outage_seconds: float | None = None
        self._offline_until = 0.0
        self._listener_closed = threading.Event()
        self._outage_thread: threading.Thread | None = None
        self.last_error: BaseException | None = None

        self._app = ProviderApp(state, start_outage=self._start_outage, listen_address=lambda: (self._host, self._port))
        self._server: BackgroundServer = serve_in_background(self._app, host=host, port=port)
        self._port = self._server.port
        state.faults.set_outage_handler(self._start_outage_and_wait)
        _providers.add(self)
        logger.info("provider serving %s on %s, upstream %s", sorted(state.models), self.base_url, state.upstream.base_url)

    # Addresses and objects a notebook uses.

    @property
    def url(self) -> str:
        """The root URL, such as ``http://127.0.0.1:PORT``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``url`` plus ``/v1``), for ``openai.OpenAI(base_url=...)``."""
        return self.url + "/v1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def model(self) -> str:
        """The first model name the provider advertises."""
        return next(iter(self._state.models))

    @property
    def models(self) -> list[str]:
        """Every model name the provider advertises."""
        return list(self._state.models)

    @property
    def api_key(self) -> ApiKey:
        """The key issued at start (named ``default``)."""
        return self.key(DEFAULT_KEY_NAME)

    @property
    def faults(self) -> FaultScript:
        """The fault script: ``provider.faults.script(["503", "ok"])``."""
        return self._state.faults

    @property
    def ledger(self) -> Ledger:
        """Every billed request, with per-key totals and cost."""
        return self._state.ledger

    @property
    def charges(self) -> list[Charge]:
        """Every charge that ``POST /v1/payments/charges`` applied, oldest first."""
        return self._state.payments.charges

    @property
    def pricing(self) -> Pricing:
        """Prices for the requests billed from now on; assign a new ``Pricing`` to change them."""
        return self._state.pricing

    @pricing.setter
    def pricing(self, pricing: Pricing) -> None:
        if not isinstance(pricing, Pricing):
            raise TypeError(f"invalid pricing {pricing!r}: use Pricing(input_per_million=..., output_per_million=...)")
        self._state.pricing = pricing

    @property
    def latency(self) -> Latency:
        """Simulated delays for the requests that start from now on; assign a new ``Latency`` to change them."""
        return self._state.latency

    @latency.setter
    def latency(self, latency: Latency) -> None:
        if not isinstance(latency, Latency):
            raise TypeError(f"invalid latency {latency!r}: use Latency(round_trip_s=..., time_to_first_token_s=...)")
        self._state.latency = latency

    @property
    def running(self) -> bool:
        """Whether the provider is started and not stopped; it is running during an outage too."""
        return not self._stopped

    # Keys.

    def issue_key(
        self, name: str, *, rate_limits: RateLimits | None = None, budget_usd: float | None = None
    ) -> ApiKey:
        """Issue a new key called ``name``; limits and budget left as None are those given to ``start_provider``."""
        policy = KeyPolicy(
            rate_limits=rate_limits or self._default_policy.rate_limits,
            budget_usd=self._default_policy.budget_usd if budget_usd is None else budget_usd,
        )
        return self._state.keys.issue(name, policy)

    def revoke_key(self, key: ApiKey | str) -> None:
        """Stop accepting ``key``; requests with it get 401 from now on."""
        self._state.keys.revoke(key)

    def key(self, name: str) -> ApiKey:
        """Return the key called ``name``."""
        return self._state.keys.get(name)

    # Clients.

    def client(self, api_key: ApiKey | None = None, **options):
        """Return an ``openai.OpenAI`` client for this provider, with ``api_key`` or the default key."""
        import openai

        key = api_key or self.api_key
        return openai.OpenAI(base_url=self.base_url, api_key=key.get_secret_value(), **options)

    def async_client(self, api_key: ApiKey | None = None, **options):
        """Return an ``openai.AsyncOpenAI`` client for this provider."""
        import openai

        key = api_key or self.api_key
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key.get_secret_value(), **options)

    def export_env(
        self,
        api_key: ApiKey | None = None,
        *,
        base_url_variable: str = DEFAULT_BASE_URL_VARIABLE,
        api_key_variable: str = DEFAULT_API_KEY_VARIABLE,
    ) -> None:
        """Set ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` for clients built later, printing nothing."""
        os.environ[base_url_variable] = self.base_url
        (api_key or self.api_key).export(api_key_variable)

    # Outages.

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        """Stop listening inside the ``with`` block, so that every connection attempt is refused.

        The server stops as for :class:`ConnectionRefused` and starts again on
        the same port when the block ends.
        """
        with self._condition:
            self._offline_holds += 1
        try:
            self._start_outage_and_wait(ConnectionRefused(seconds=0.0))
            yield
        finally:
            with self._condition:
                self._offline_holds -= 1
                self._condition.notify_all()
        self._wait_until_online()

    def _start_outage_and_wait(self, refused: ConnectionRefused) -> None:
        self._start_outage(refused)
        if not self._listener_closed.wait(OUTAGE_STOP_TIMEOUT_S):
            raise RuntimeError(f"the provider on port {self._port} did not stop listening within {OUTAGE_STOP_TIMEOUT_S} s")

    def _start_outage(self, refused: ConnectionRefused) -> None:
        """Start an outage of ``refused.seconds``, or lengthen the one under way, without waiting for it."""
        with self._condition:
            if self._stopped:
                return
            if self._phase == "online":
                self._phase = "going offline"
                self._outage_seconds = refused.seconds
                self._outage_thread = threading.Thread(
                    target=self._run_outages, name=f"provider-outage-{self._port}", daemon=True
                )
                self._outage_thread.start()
            elif self._phase == "going offline":
                self._outage_seconds = max(self._outage_seconds, refused.seconds)
            elif self._phase == "offline":
                self._offline_until = max(self._offline_until, time.monotonic() + refused.seconds)
                self._condition.notify_all()
            else:
                # Coming back online: the next outage starts right after the restart.
                self._next_outage_seconds = max(self._next_outage_seconds or 0.0, refused.seconds)

    def _run_outages(self) -> None:
        while True:
            self._server.stop()
            with self._condition:
                self._phase = "offline"
                self._listener_closed.set()
                self._offline_until = time.monotonic() + self._outage_seconds
                logger.info("provider on port %d is offline for %.2f s", self._port, self._outage_seconds)
                while not self._stopped and (self._offline_holds > 0 or time.monotonic() < self._offline_until):
                    remaining = self._offline_until - time.monotonic()
                    self._condition.wait(timeout=remaining if remaining > 0 else None)
                if self._stopped:
                    self._finish_outages()
                    return
                self._phase = "coming online"
                self._listener_closed.clear()

            try:
                server = serve_in_background(self._app, host=self._host, port=self._port)
            except (OSError, RuntimeError) as error:
                logger.error("provider could not listen on port %d again after the outage: %s", self._port, error)
                self.last_error = error
                with self._condition:
                    self._listener_closed.set()
                    self._finish_outages()
                return

            with self._condition:
                self._server = server
                logger.info("provider on port %d is listening again", self._port)
                if self._next_outage_seconds is None or self._stopped:
                    self._phase = "online"
                    self._finish_outages()
                    return
                self._phase = "going offline"
                self._outage_seconds, self._next_outage_seconds = self._next_outage_seconds, None

    def _finish_outages(self) -> None:
        self._outage_thread = None
        self._next_outage_seconds = None
        self._condition.notify_all()

    def _wait_until_online(self) -> None:
        deadline = time.monotonic() + OUTAGE_STOP_TIMEOUT_S
        with self._condition:
            while self._outage_thread is not None and not self._stopped and time.monotonic() < deadline:
                self._condition.wait(timeout=0.05)

    # Lifetime.

    def stop(self) -> None:
        """Stop serving: nothing listens on the port afterwards, and the server's shutdown closes the upstream client."""
        with self._condition:
            if self._stopped:
                return
            self._stopped = True
            self._condition.notify_all()
            outage_thread = self._outage_thread
        if outage_thread is not None and outage_thread is not threading.current_thread():
            outage_thread.join(OUTAGE_STOP_TIMEOUT_S)
        self._server.stop()
        logger.info("provider on port %d stopped", self._port)

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"Provider(base_url={self.base_url!r}, models={self.models}, upstream={self._state.upstream.base_url!r}, "
            f"keys={self._state.keys.names()}, running={self.running})"
        )


def start_provider(
    upstream: object | None = None,
    *,
    upstream_base_url: str | None = None,
    upstream_model: str | None = None,
    upstream_api_key: str | None = None,
    upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S,
    models: str | Sequence[str] | Mapping[str, str] = DEFAULT_MODEL_NAME,
    api_key: str | None = None,
    rate_limits: RateLimits | None = None,
    budget_usd: float | None = None,
    pricing: Pricing | None = None,
    latency: Latency | None = None,
    clock: Callable[[], float] = time.monotonic,
    host: str = LOOPBACK,
    port: int = 0,
) -> Provider:
    """Start a simulated hosted provider in front of an OpenAI-compatible upstream.

    ``upstream`` is an object with ``.base_url`` and ``.model``, such as the
    backend from ``start_backend()``; or pass ``upstream_base_url`` (ending
    in ``/v1``) and ``upstream_model``. ``models`` is the name (or names) the
    provider advertises, each mapped to the upstream model, or a mapping from
    advertised name to upstream model. ``api_key`` fixes the default key's
    value (otherwise it is random). ``rate_limits`` and ``budget_usd`` apply
    to the default key and are the defaults for issued keys. ``clock``
    (monotonic seconds) drives rate limits and idempotency expiry, so tests
    can pass a fake one.
    """
    base_url = upstream_base_url or getattr(upstream, "base_url", None)
    model_name = upstream_model or getattr(upstream, "model", None)
    if not base_url:
        raise ValueError(
            "missing upstream: pass upstream=backend (from lab_support.start_backend()) "
            "or upstream_base_url='http://127.0.0.1:PORT/v1'"
        )
    upstream_config = Upstream(
        base_url=base_url, model=model_name or "", api_key=upstream_api_key, timeout_s=upstream_timeout_s
    )

    state = ProviderState(
        models=_model_map(models, upstream_config.model),
        upstream=upstream_config,
        keys=KeyRing(),
        ledger=Ledger(),
        limiter=RateLimiter(clock),
        faults=FaultScript(),
        payments=Payments(clock),
        pricing=pricing or Pricing(),
        latency=latency or Latency(),
        clock=clock,
    )
    policy = KeyPolicy(rate_limits=rate_limits or RateLimits(), budget_usd=budget_usd)
    if api_key is None:
        state.keys.issue(DEFAULT_KEY_NAME, policy)
    else:
        state.keys.add(ApiKey(DEFAULT_KEY_NAME, api_key), policy)

    return Provider(state, default_policy=policy, host=host, port=port)


def _model_map(models: str | Sequence[str] | Mapping[str, str], upstream_model: str) -> dict[str, str]:
    if isinstance(models, str):
        names: dict[str, str] = {models: upstream_model}
    elif isinstance(models, Mapping):
        names = dict(models)
    else:
        names = {name: upstream_model for name in models}
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"invalid models {models!r}: give at least one non-empty model name")
    return names


def _stop_all() -> None:
    for provider in list(_providers):
        provider.stop()


atexit.register(_stop_all)
