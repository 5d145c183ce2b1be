"""Find API keys and other secrets that would reach git: in code, in notebook outputs, in ``.env`` files.

    >>> report = scan_secrets(".")
    >>> print(report)          # file, line or cell, rule and a masked preview per finding
    >>> report.ok
    True

What is scanned is what a commit would include (see :mod:`._files`). Each
finding names the file, the line (or the notebook cell and whether the key
is in its source or its output) and a preview in which every secret is
masked, so the report itself can be shared. The scanner also checks that
``.gitignore`` keeps ``.env`` out, and reports any dotenv file that is
committed or would be.

A line that contains ``secret-scan: allow`` is skipped, for documentation
that must show a key-shaped value.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lab_support.deploy._files import RepositoryFiles, is_env_file, list_repository_files
from lab_support.deploy._masking import mask_secret
from lab_support.deploy._table import html_table, text_table

ALLOW_MARKER = "secret-scan: allow"
MAX_FILE_BYTES = 5_000_000
BINARY_SNIFF_BYTES = 8192
PREVIEW_CONTEXT_CHARS = 40
# A generated key contains a long random run: at least 10 letters and digits in a row,
# with a digit or mixed case, at 3 or more bits of entropy per character, and not mostly
# alphabet or number sequences. Hand-written stand-ins such as "sk-lab-course-key-1234"
# or "sk-test-0123456789abcdef" fail one of these, so they are skipped.
MIN_RANDOM_RUN = 10
MIN_RUN_ENTROPY_BITS = 3.0
MAX_SEQUENTIAL_SHARE = 0.5
PLACEHOLDER_MARKERS = (
    "your", "example", "placeholder", "changeme", "change-me", "xxxx", "redacted", "dummy",
    "<", ">", "...", "****", "${", "{{", "%(",
)

FIX_KEY_IN_CODE = (
    "delete the key from the file, revoke it at the provider (git history keeps it), "
    "and read it from an environment variable through the settings instead"
)
FIX_KEY_IN_OUTPUT = (
    "clear this cell's output, print a masked value instead (mask_secret), and revoke the key"
)
FIX_COMMITTED_ENV = (
    "run 'git rm --cached {path}', make sure .gitignore lists it, and revoke every key it contains"
)
FIX_UNIGNORED_ENV = "add '{name}' to .gitignore so that 'git add .' cannot commit it"
FIX_GITIGNORE = "add a line '.env' (and '.env.*' with '!.env.example') to .gitignore"


@dataclass(frozen=True)
class SecretRule:
    """A pattern for one kind of secret; ``group`` is the regex group that contains the secret itself.

    ``needs_random_run`` skips matches without a generated-looking run (see MIN_RANDOM_RUN).
    """

    name: str
    pattern: re.Pattern[str]
    group: int = 0
    needs_random_run: bool = True
    env_files_only: bool = False


SECRET_RULES: tuple[SecretRule, ...] = (
    SecretRule("private-key", re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"), needs_random_run=False),
    SecretRule("anthropic-key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    SecretRule("openai-style-key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    SecretRule("huggingface-token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    SecretRule("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})")),
    # A third of real key ids have no digit, so the random-run test would miss them.
    SecretRule("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), needs_random_run=False),
    SecretRule("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    SecretRule("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    SecretRule(
        "bearer-token",
        re.compile(r"\bBearer\s+([A-Za-z0-9._~+/-]{20,}=*)"),
        group=1,
    ),
    SecretRule(
        "assigned-secret",
        re.compile(
            r"(?i)\b\w*?(?:api[_-]?key|secret[_-]?key|client[_-]?secret|secret|passw(?:or)?d"
            r"|access[_-]?token|auth[_-]?token|private[_-]?key)\b[\"']?\s*(?:=|:|=>)\s*[\"']([^\"'\s]{16,})[\"']"
        ),
        group=1,
    ),
    SecretRule(
        "dotenv-secret",
        re.compile(
            r"^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*(?:KEY|SECRET|TOKEN|PASSWORD|PASSWD)\s*=\s*[\"']?([^\"'\s#]{8,})"
        ),
        group=1,
        needs_random_run=False,
        env_files_only=True,
    ),
)


@dataclass(frozen=True)
class SecretMatch:
    """One secret found in a piece of text: its 1-based line, its rule and a masked preview of the line."""

    line: int
    rule: str
    masked: str
    preview: str


@dataclass(frozen=True)
class SecretFinding:
    """One problem found by :func:`scan_secrets`; the preview never contains the secret itself."""

    path: str
    location: str
    rule: str
    preview: str
    fix: str
    line: int | None = None
    cell: int | None = None


@dataclass
class ScanReport:
    """The result of :func:`scan_secrets`."""

    root: Path
    mode: str
    files_scanned: int
    findings: list[SecretFinding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def _rows(self) -> list[tuple[str, str, str, str]]:
        return [(f.path, f.location, f.rule, f.preview) for f in self.findings]

    def text(self) -> str:
        """Format the report as plain text: a summary line, the findings table and what to fix."""
        source = "git ls-files" if self.mode == "git" else "folder walk"
        summary = f"Scanned {self.files_scanned} files under {self.root} ({source}): "
        if self.ok:
            return summary + "no secrets found, and .gitignore keeps .env out."
        lines = [summary + f"{len(self.findings)} finding(s).", ""]
        lines.append(text_table(("FILE", "WHERE", "RULE", "PREVIEW (masked)"), self._rows()))
        lines.append("")
        lines.append("What to fix:")
        for finding in self.findings:
            lines.append(f"  {finding.path} {finding.location}: {finding.fix}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if self.ok:
            return f"<p>{self.text()}</p>"
        rows = [(*row, finding.fix) for row, finding in zip(self._rows(), self.findings)]
        return (
            f"<p>{len(self.findings)} finding(s) in {self.files_scanned} files under {self.root}</p>"
            + html_table(("file", "where", "rule", "preview (masked)", "what to fix"), rows)
        )

    def __str__(self) -> str:
        return self.text()


def shannon_entropy(text: str) -> float:
    """Return the Shannon entropy of ``text`` in bits per character (0 for an empty string)."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_like_placeholder(value: str) -> bool:
    """Return whether ``value`` is a documentation placeholder such as ``sk-your-key-here``."""
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS) or len(set(lowered)) <= 2


def _sequential_share(run: str) -> float:
    """Return the share of neighbouring characters that follow each other, as in ``abcd`` or ``1234``."""
    steps = list(zip(run, run[1:]))
    return sum(1 for a, b in steps if ord(b) - ord(a) == 1) / len(steps) if steps else 0.0


def has_random_run(value: str) -> bool:
    """Return whether ``value`` contains a run that looks generated rather than typed; see MIN_RANDOM_RUN."""
    for run in re.findall(r"[A-Za-z0-9]+", value):
        if len(run) < MIN_RANDOM_RUN:
            continue
        has_digit = any(c.isdigit() for c in run)
        mixed_case = any(c.islower() for c in run) and any(c.isupper() for c in run)
        if (
            (has_digit or mixed_case)
            and shannon_entropy(run) >= MIN_RUN_ENTROPY_BITS
            and _sequential_share(run) <= MAX_SEQUENTIAL_SHARE
        ):
            return True
    return False


def _find_spans(line: str, *, env_file: bool) -> list[tuple[int, int, str]]:
    """Return ``(start, end, rule)`` for each secret in one line; overlapping matches count once."""
    spans: list[tuple[int, int, str]] = []
    for rule in SECRET_RULES:
        if rule.env_files_only and not env_file:
            continue
        for match in rule.pattern.finditer(line):
            start, end = match.span(rule.group)
            value = match.group(rule.group)
            if looks_like_placeholder(value) and rule.name != "private-key":
                continue
            if rule.needs_random_run and not has_random_run(value):
                continue
            if any(start < other_end and other_start < end for other_start, other_end, _ in spans):
                continue
            spans.append((start, end, rule.name))
    return sorted(spans)


def _preview(line: str, spans: list[tuple[int, int, str]], focus: tuple[int, int, str]) -> str:
    """Return the line around ``focus`` with every secret in it masked."""
    masked_parts = []
    cursor = 0
    focus_start = 0
    for start, end, _ in spans:
        masked_parts.append(line[cursor:start])
        if (start, end) == focus[:2]:
            focus_start = sum(len(part) for part in masked_parts)
        masked_parts.append(mask_secret(line[start:end]))
        cursor = end
    masked_parts.append(line[cursor:])
    masked = "".join(masked_parts)
    focus_length = len(mask_secret(line[focus[0] : focus[1]]))
    begin = max(0, focus_start - PREVIEW_CONTEXT_CHARS)
    end = focus_start + focus_length + PREVIEW_CONTEXT_CHARS
    snippet = " ".join(masked[begin:end].split())
    if begin > 0:
        snippet = "..." + snippet
    if end < len(masked):
        snippet += "..."
    return snippet


def find_secrets_in_text(text: str, *, env_file: bool = False) -> list[SecretMatch]:
    """Return every secret found in ``text``, one entry per secret, with masked previews.

    ``env_file`` also applies the rule for unquoted ``NAME_KEY=value`` lines of dotenv files.
    """
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER in line:
            continue
        spans = _find_spans(line, env_file=env_file)
        for span in spans:
            found.append(
                SecretMatch(
                    line=number,
                    rule=span[2],
                    masked=mask_secret(line[span[0] : span[1]]),
                    preview=_preview(line, spans, span),
                )
            )
    return found


def _cell_text(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return str(value) if value is not None else ""


def _notebook_output_texts(output: dict) -> Iterator[str]:
    if "text" in output:
        yield _cell_text(output["text"])
    for mime, value in (output.get("data") or {}).items():
        # Images are base64, so key-shaped runs in them are noise.
        if not mime.startswith("image/"):
            yield _cell_text(value) if not isinstance(value, dict) else json.dumps(value)
    if output.get("output_type") == "error":
        yield output.get("evalue", "")
        yield "\n".join(output.get("traceback") or [])


def _scan_notebook(path: str, text: str) -> list[SecretFinding] | None:
    """Return the findings of a notebook by cell, or None when the file is not notebook JSON."""
    try:
        nb = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None

    findings = []
    for number, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict):
            continue
        for match in find_secrets_in_text(_cell_text(cell.get("source"))):
            findings.append(
                SecretFinding(path, f"cell {number}, line {match.line}", match.rule, match.preview,
                              FIX_KEY_IN_CODE, line=match.line, cell=number)
            )
        for output in cell.get("outputs") or []:
            for output_text in _notebook_output_texts(output):
                for match in find_secrets_in_text(output_text):
                    findings.append(
                        SecretFinding(path, f"cell {number}, output", match.rule, match.preview,
                                      FIX_KEY_IN_OUTPUT, cell=number)
                    )
    return findings


def _read_text(path: Path) -> str | None:
    """Return the file's text, or None for binary files and files over MAX_FILE_BYTES."""
    if path.stat().st_size > MAX_FILE_BYTES:
        return None
    data = path.read_bytes()
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_file(root: Path, relative_path: str) -> list[SecretFinding] | None:
    """Return the secrets in one file, or None when it was skipped as binary or too large."""
    text = _read_text(root / relative_path)
    if text is None:
        return None
    if relative_path.endswith(".ipynb"):
        notebook_findings = _scan_notebook(relative_path, text)
        if notebook_findings is not None:
            return notebook_findings
    env_file = PurePosixPath(relative_path).name.startswith(".env") or relative_path.endswith(".env")
    return [
        SecretFinding(relative_path, f"line {m.line}", m.rule, m.preview, FIX_KEY_IN_CODE, line=m.line)
        for m in find_secrets_in_text(text, env_file=env_file)
    ]


def _env_file_findings(repo: RepositoryFiles) -> list[SecretFinding]:
    findings = []
    for relative_path in repo.files:
        if not is_env_file(relative_path):
            continue
        name = PurePosixPath(relative_path).name
        if relative_path in repo.tracked:
            findings.append(
                SecretFinding(relative_path, "whole file", "committed-env-file",
                              "a dotenv file is tracked by git", FIX_COMMITTED_ENV.format(path=relative_path))
            )
        else:
            findings.append(
                SecretFinding(relative_path, "whole file", "env-file-not-ignored",
                              "a dotenv file would be committed by 'git add .'", FIX_UNIGNORED_ENV.format(name=name))
            )
    if not repo.is_ignored(".env"):
        findings.append(
            SecretFinding(".gitignore", "whole file", "gitignore-missing-env",
                          ".env is not ignored", FIX_GITIGNORE)
        )
    return findings


def scan_secrets(root: str | Path = ".") -> ScanReport:
    """Scan the files under ``root`` that a commit would include, and the ``.gitignore`` rules for ``.env``."""
    repo = list_repository_files(root)
    report = ScanReport(root=repo.root, mode=repo.mode, files_scanned=0)
    report.findings.extend(_env_file_findings(repo))
    for relative_path in repo.files:
        file_findings = scan_file(repo.root, relative_path)
        if file_findings is None:
            report.skipped.append(relative_path)
            continue
        report.files_scanned += 1
        report.findings.extend(file_findings)
    return report
