"""Visible cases of lab 05, the deployment checklist.

Exercises (points in the notebook metadata):

- ``05.mask_key``: ``mask_key(value)``, a preview of a secret that reveals at most 8 characters.
- ``05.find_keys``: ``find_keys(text)``, the line and masked preview of each OpenAI-style key.
- ``05.readiness``: ``async readiness(base_url, model, *, api_key=None, timeout_s=2.0)``, the status and body of ``GET /api/ready``.
- ``05.is_pinned``: ``is_pinned(name)``, whether a model name is one fixed version.
- ``05.summarize``: ``summarize(records, wall_s)``, the headline numbers of a load test.
- ``05.build_app``: ``build_app(upstream)``, the deployable app, which must pass the audit.

The key-shaped values below come from a seeded generator, so they are the
same on every run and were never issued by any provider.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import random
import socket
import string
import threading
from collections.abc import Callable
from typing import Any

from lab_support._net import LOOPBACK, free_port
from lab_support.deploy import ITEM_ORDER, audit, mask_secret, start_paced_upstream
from lab_support.grading import Case, case, register

KEY_ALPHABET = string.ascii_letters + string.digits
# Limits for the cases that start servers; the audit waits up to its 20 s stall limit.
SERVER_CASE_TIMEOUT_S = 20.0
AUDIT_CASE_TIMEOUT_S = 180.0
SLOW_UPSTREAM_TIMEOUT_S = 0.5


def made_up_key(seed: int, *, prefix: str = "sk-proj-", length: int = 40) -> str:
    """Return a key-shaped value made from ``seed``: the same on every run, and never a real key."""
    generator = random.Random(seed)
    return prefix + "".join(generator.choice(KEY_ALPHABET) for _ in range(length))


KEY_A = made_up_key(1)
KEY_B = made_up_key(2, prefix="sk-", length=32)
KEY_C = made_up_key(3, prefix="sk-svcacct-", length=24)
UPSTREAM_KEY = made_up_key(4, prefix="sk-lab-", length=32)


# 05.mask_key

register(
    "05.mask_key",
    Case("a 48-character key shows its first and last 4 characters", args=(KEY_A,),
         expected=f"{KEY_A[:4]}...{KEY_A[-4:]}", hint="value[:4] + '...' + value[-4:]"),
    Case("exactly 20 characters still shows the ends", args=("abcd" + "x" * 12 + "wxyz",), expected="abcd...wxyz",
         hint="the ends are shown from 20 characters on"),
    Case("19 characters are masked completely", args=("s" * 19,), expected="****",
         hint="below 20 characters, 8 visible characters would be too large a share"),
    Case("an empty value is masked", args=("",), expected="****"),
)


# 05.find_keys

CODE_WITH_KEY = f'import os\n\nOPENAI_API_KEY = "{KEY_A}"\nclient = make_client(OPENAI_API_KEY)\n'
OUTPUT_WITH_TWO_KEYS = f"request failed\nAuthorization: Bearer {KEY_B} (retry with {KEY_C})\n"
TEXT_WITHOUT_KEYS = 'api_key = os.environ["OPENAI_API_KEY"]\n# keys look like sk-...\nprint("sk-short")\n'

register(
    "05.find_keys",
    Case("a key assigned in code", args=(CODE_WITH_KEY,), expected=[(3, mask_secret(KEY_A))],
         hint="number lines from 1, and return (line, mask_key(key)) tuples"),
    Case("two keys on one line, in order", args=(OUTPUT_WITH_TWO_KEYS,),
         expected=[(2, mask_secret(KEY_B)), (2, mask_secret(KEY_C))],
         hint="use re.finditer on each line, so every key on a line is found"),
    Case("keys read from the environment are not findings", args=(TEXT_WITHOUT_KEYS,), expected=[],
         hint="a key is 'sk-' followed by at least 20 letters, digits, '-' or '_'"),
    Case("an empty text has no keys", args=("",), expected=[]),
)


# 05.is_pinned

PINNING_CASES = (
    ("smollm2-135m-instruct-q4_1", True),
    ("gpt-4o-2024-08-06", True),
    ("llama3.2:3b-instruct-q4_K_M", True),
    ("latest", False),
    ("llama3:latest", False),
    ("claude-3-5-sonnet-latest", False),
    ("stable", False),
    ("", False),
)

register(
    "05.is_pinned",
    *(
        Case(f"{name!r} is {'pinned' if pinned else 'floating'}", args=(name,), expected=pinned,
             hint="split the lowercased name on - : / _ . @ and look for a 'latest' segment")
        for name, pinned in PINNING_CASES
    ),
)


# 05.summarize

def _close_dicts(actual: Any, expected: dict[str, Any]) -> bool:
    """Compare summaries: the same keys, equal counts and Nones, and floats within 1e-6."""
    if not isinstance(actual, dict) or set(actual) != set(expected):
        return False
    for key, value in expected.items():
        got = actual[key]
        if value is None or key == "errors":
            if got != value:
                return False
        elif isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        elif not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
            return False
    return True


def _record(ttft_s: float | None, tokens: int, error: str | None = None) -> dict[str, Any]:
    return {"ttft_s": ttft_s, "tokens": tokens, "error": error}


MIXED_RECORDS = [_record(0.1, 10), _record(0.3, 10), _record(0.2, 10), _record(None, 0, "HTTP 503")]

register(
    "05.summarize",
    Case("three successes and one failure", args=(MIXED_RECORDS, 2.0),
         expected={"p50_ttft_s": 0.2, "p95_ttft_s": 0.29, "tokens_per_s": 15.0, "errors": 1},
         compare=_close_dicts,
         hint="p95 of [0.1, 0.2, 0.3] with linear interpolation is 0.2 + 0.9 * (0.3 - 0.2)"),
    Case("a failed stream's first token does not count", args=([_record(1.0, 4), _record(9.0, 2, "stream cut")], 4.0),
         expected={"p50_ttft_s": 1.0, "p95_ttft_s": 1.0, "tokens_per_s": 1.5, "errors": 1},
         compare=_close_dicts,
         hint="take percentiles over requests whose error is None, but count every streamed token"),
    Case("every request failed", args=([_record(None, 0, "HTTP 502")], 1.0),
         expected={"p50_ttft_s": None, "p95_ttft_s": None, "tokens_per_s": 0.0, "errors": 1},
         compare=_close_dicts, hint="with no successful request the percentiles are None"),
    Case("zero wall time raises ValueError", args=(MIXED_RECORDS, 0.0), raises=ValueError),
)


# 05.readiness: the cases share one paced upstream that requires UPSTREAM_KEY.

_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def shared_upstream():
    """Return the paced upstream of the readiness cases, starting it on first use."""
    with _shared_lock:
        if "upstream" not in _shared:
            _shared["upstream"] = start_paced_upstream(api_key=UPSTREAM_KEY)
        return _shared["upstream"]


def silent_upstream_url() -> str:
    """Return a base URL whose server accepts connections and never responds, for timeout cases."""
    with _shared_lock:
        if "silent" not in _shared:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((LOOPBACK, 0))
            listener.listen(16)
            _shared["silent"] = listener
            atexit.register(listener.close)
        port = _shared["silent"].getsockname()[1]
    return f"http://{LOOPBACK}:{port}/v1"


def _call(answer: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict]:
    result = answer(*args, **kwargs)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    assert isinstance(result, tuple) and len(result) == 2, f"expected a (status, body) tuple, got {result!r}"
    status, body = result
    assert isinstance(body, dict), f"expected the body to be a dict, got {type(body).__name__}"
    assert UPSTREAM_KEY not in json.dumps(body, default=str), "the body contains the API key"
    return status, body


@case("05.readiness", timeout_s=SERVER_CASE_TIMEOUT_S, hint="GET {base_url}/models with the Bearer key; 200 only if model is listed")
def ready_when_the_model_is_listed(answer):
    """200 and the model name when the upstream lists the model"""
    upstream = shared_upstream()
    status, body = _call(answer, upstream.base_url, upstream.model, api_key=UPSTREAM_KEY)
    assert status == 200, f"expected status 200, got {status} with body {body}"
    assert body.get("status") == "ready", f"expected body['status'] == 'ready', got {body}"
    assert body.get("model") == upstream.model, f"expected body['model'] == {upstream.model!r}, got {body}"


@case("05.readiness", timeout_s=SERVER_CASE_TIMEOUT_S, hint="compare the model with the ids in response.json()['data']")
def not_ready_when_the_model_is_missing(answer):
    """503 when the upstream does not list the model"""
    upstream = shared_upstream()
    status, body = _call(answer, upstream.base_url, "another-model-v2", api_key=UPSTREAM_KEY)
    assert status == 503, f"expected 503 for a model the upstream does not serve, got {status}"
    assert body.get("status") == "not ready", f"expected body['status'] == 'not ready', got {body}"


@case("05.readiness", timeout_s=SERVER_CASE_TIMEOUT_S, hint="treat any status other than 200 from /models as not ready")
def not_ready_when_the_key_is_rejected(answer):
    """503 when the upstream rejects the key"""
    upstream = shared_upstream()
    status, _ = _call(answer, upstream.base_url, upstream.model, api_key="sk-lab-wrong")
    assert status == 503, f"expected 503 when the upstream answers 401, got {status}"


@case("05.readiness", timeout_s=SERVER_CASE_TIMEOUT_S, hint="catch httpx.HTTPError and return 503")
def not_ready_when_nothing_listens(answer):
    """503 when nothing listens at the base URL"""
    status, _ = _call(answer, f"http://{LOOPBACK}:{free_port()}/v1", "m-1", api_key=UPSTREAM_KEY)
    assert status == 503, f"expected 503 when the connection is refused, got {status}"


@case("05.readiness", timeout_s=SERVER_CASE_TIMEOUT_S, hint="pass timeout=timeout_s to the httpx client")
def not_ready_when_the_upstream_hangs(answer):
    """503 within the timeout when the upstream never responds"""
    status, _ = _call(answer, silent_upstream_url(), "m-1", api_key=UPSTREAM_KEY, timeout_s=SLOW_UPSTREAM_TIMEOUT_S)
    assert status == 503, f"expected 503 when the upstream does not answer in time, got {status}"


# 05.build_app: the audit, against a provider in front of a paced upstream.

@case("05.build_app", timeout_s=AUDIT_CASE_TIMEOUT_S,
      hint="create_app with RouteTimeouts(read_s=10) plus a GET /api/ready route that awaits readiness()")
def passes_the_audit(answer):
    """the app passes every audit item except the repository scan"""
    from lab_support.provider import start_provider

    with start_paced_upstream(tokens=24, interval_s=0.02) as upstream:
        with start_provider(upstream=upstream, models=upstream.model) as provider:
            app = answer(provider)
            items = [item for item in ITEM_ORDER if item != "repository"]
            report = audit(app, upstream=provider, items=items, show=False)
    assert report.ok, "the audit found problems:\n" + report.text()
