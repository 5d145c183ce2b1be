"""Deployment tools for lab 05: secrets, health and readiness, model pinning, an audit and a load test.

    >>> from lab_support.deploy import audit, create_deployable_app, run_load_test, scan_secrets
    >>> print(scan_secrets("."))                      # keys in code, notebook outputs, committed .env
    >>> app = create_deployable_app(upstream_base_url=provider.base_url, model=provider.model,
    ...                             upstream_api_key=provider.api_key)
    >>> report = audit(app, upstream=provider, repo=".")   # the checklist, as a pass/fail table
    >>> result = run_load_test(server.url, clients=4, duration_s=10)
    >>> plot_load_test(result)

Everything here targets loopback addresses only.
"""

from lab_support.deploy._audit import ITEM_ORDER, AuditItem, AuditReport, audit
from lab_support.deploy._files import RepositoryFiles, find_repository_root, is_env_file, list_repository_files
from lab_support.deploy._loadtest import (
    CHAT_PATH,
    LoadTestResult,
    ProbeSample,
    RequestRecord,
    chat_body,
    interpret_event,
    openai_chat_body,
    percentile,
    run_load_test,
    run_load_test_async,
)
from lab_support.deploy._masking import mask_secret, redact
from lab_support.deploy._paced import PacedUpstream, start_paced_upstream
from lab_support.deploy._pinning import (
    UnpinnedModel,
    UnpinnedModelError,
    find_unpinned_models,
    is_pinned,
    model_names_in_code,
    require_pinned,
)
from lab_support.deploy._plots import (
    draw_scaling_diagram,
    plot_load_test,
    plot_runtime_comparison,
    tokens_per_second_series,
)
from lab_support.deploy._readiness import (
    HEALTH_PATH,
    READY_PATH,
    Readiness,
    ReadinessProbe,
    add_health_route,
    add_readiness_route,
    check_readiness,
    has_route,
)
from lab_support.deploy._reference import DEPLOY_TIMEOUTS, create_deployable_app
from lab_support.deploy._runtime import RELAY_STYLES, build_relay_app, limit_request_time
from lab_support.deploy._secrets import (
    SECRET_RULES,
    ScanReport,
    SecretFinding,
    SecretMatch,
    find_secrets_in_text,
    scan_secrets,
)

__all__ = [
    "CHAT_PATH",
    "DEPLOY_TIMEOUTS",
    "HEALTH_PATH",
    "ITEM_ORDER",
    "READY_PATH",
    "RELAY_STYLES",
    "SECRET_RULES",
    "AuditItem",
    "AuditReport",
    "LoadTestResult",
    "PacedUpstream",
    "ProbeSample",
    "Readiness",
    "ReadinessProbe",
    "RepositoryFiles",
    "RequestRecord",
    "ScanReport",
    "SecretFinding",
    "SecretMatch",
    "UnpinnedModel",
    "UnpinnedModelError",
    "add_health_route",
    "add_readiness_route",
    "audit",
    "build_relay_app",
    "chat_body",
    "check_readiness",
    "create_deployable_app",
    "draw_scaling_diagram",
    "find_repository_root",
    "find_secrets_in_text",
    "find_unpinned_models",
    "has_route",
    "interpret_event",
    "is_env_file",
    "is_pinned",
    "limit_request_time",
    "list_repository_files",
    "mask_secret",
    "model_names_in_code",
    "openai_chat_body",
    "percentile",
    "plot_load_test",
    "plot_runtime_comparison",
    "redact",
    "require_pinned",
    "run_load_test",
    "run_load_test_async",
    "scan_secrets",
    "start_paced_upstream",
    "tokens_per_second_series",
]
