"""The secret scanner: planted keys in a temporary repository, masking, .env handling, git and plain folders.

Every key here is made up at run time from a seeded generator, so this file
itself contains nothing key-shaped for the scanner to find.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from lab_support.deploy import find_secrets_in_text, list_repository_files, mask_secret, redact, scan_secrets
from lab_support.deploy._secrets import has_random_run, looks_like_placeholder

ALPHABET = string.ascii_letters + string.digits
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="the git command is not installed")


def made_up(prefix: str, length: int, seed: int, alphabet: str = ALPHABET) -> str:
    generator = random.Random(seed)
    return prefix + "".join(generator.choice(alphabet) for _ in range(length))


OPENAI_KEY = made_up("sk-proj-", 40, 1)
ANTHROPIC_KEY = made_up("sk-ant-api03-", 48, 2)
HF_TOKEN = made_up("hf_", 34, 3)
GITHUB_TOKEN = made_up("ghp_", 36, 4)
AWS_KEY_ID = made_up("AKIA", 16, 5, string.ascii_uppercase + "234567")
GOOGLE_KEY = made_up("AIza", 35, 6)
BEARER_VALUE = made_up("", 32, 7)
GENERIC_SECRET = made_up("", 24, 8)
PRIVATE_KEY_HEADER = "-----BEGIN " + "RSA PRIVATE KEY-----"


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=lab", "-c", "user.email=lab@example.invalid", "-C", str(root), *args],
        check=True, capture_output=True,
    )


def notebook_with_output(source: str, output_text: str) -> str:
    cell = {
        "cell_type": "code", "execution_count": 1, "id": "c1", "metadata": {}, "source": source,
        "outputs": [{"output_type": "stream", "name": "stdout", "text": output_text}],
    }
    markdown = {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "# Notes"}
    return json.dumps({"cells": [markdown, cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture()
def leaky_repo(tmp_path: Path) -> Path:
    """A git repository with a key in code, one in a notebook output, and a committed .env."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".gitignore").write_text("__pycache__/\n")
    (root / "app.py").write_text(f'import os\n\nOPENAI_API_KEY = "{OPENAI_KEY}"\n')
    (root / "clean.py").write_text('import os\nkey = os.environ["OPENAI_API_KEY"]\n')
    (root / "lab.ipynb").write_text(notebook_with_output("print(client.api_key)", f"{ANTHROPIC_KEY}\n"))
    (root / ".env").write_text(f"HF_TOKEN={HF_TOKEN}\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    return root


@needs_git
def test_scan_finds_each_planted_key(leaky_repo: Path):
    report = scan_secrets(leaky_repo)

    assert report.mode == "git"
    assert not report.ok
    found = {(f.path, f.rule) for f in report.findings}
    assert ("app.py", "openai-style-key") in found
    assert ("lab.ipynb", "anthropic-key") in found
    assert (".env", "committed-env-file") in found
    assert (".env", "huggingface-token") in found
    assert (".gitignore", "gitignore-missing-env") in found
    assert not any(f.path == "clean.py" for f in report.findings)


@needs_git
def test_scan_reports_line_and_cell(leaky_repo: Path):
    report = scan_secrets(leaky_repo)
    by_path = {f.path: f for f in report.findings if f.rule not in ("committed-env-file",)}

    assert by_path["app.py"].line == 3
    assert by_path["app.py"].location == "line 3"
    assert by_path["lab.ipynb"].cell == 2
    assert by_path["lab.ipynb"].location == "cell 2, output"


@needs_git
def test_scan_never_shows_full_secret(leaky_repo: Path):
    report = scan_secrets(leaky_repo)
    text = report.text() + report._repr_html_() + repr(report.findings)

    for secret in (OPENAI_KEY, ANTHROPIC_KEY, HF_TOKEN):
        assert secret not in text
    assert mask_secret(OPENAI_KEY) in text


@needs_git
def test_untracked_env_not_ignored_is_finding(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("demo\n")
    git(root, "init", "-q")
    (root / ".env.local").write_text("LAB_HOSTED_API_KEY=\n")

    report = scan_secrets(root)
    rules = {(f.path, f.rule) for f in report.findings}

    assert (".env.local", "env-file-not-ignored") in rules
    assert (".gitignore", "gitignore-missing-env") in rules


@needs_git
def test_ignored_env_is_not_scanned(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".gitignore").write_text(".env\n.env.*\n!.env.example\n")
    (root / ".env").write_text(f"OPENAI_API_KEY={OPENAI_KEY}\n")
    (root / ".env.example").write_text("OPENAI_API_KEY=\nLAB_HOSTED_API_KEY=your-key-here\n")
    git(root, "init", "-q")

    report = scan_secrets(root)

    assert report.ok, report.text()
    files = list_repository_files(root).files
    assert ".env" not in files
    assert ".env.example" in files


@needs_git
def test_untracked_file_with_key_is_found(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".gitignore").write_text(".env\n")
    git(root, "init", "-q")
    (root / "notes.md").write_text(f"curl -H 'Authorization: Bearer {BEARER_VALUE}'\n")

    report = scan_secrets(root)

    assert [(f.path, f.rule) for f in report.findings] == [("notes.md", "bearer-token")]


def test_plain_folder_uses_gitignore(tmp_path: Path):
    root = tmp_path / "folder"
    (root / "src").mkdir(parents=True)
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".gitignore").write_text(".env\nbuild/\n")
    (root / ".env").write_text(f"OPENAI_API_KEY={OPENAI_KEY}\n")
    (root / "src" / "settings.py").write_text(f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\n')
    (root / ".venv" / "lib" / "vendored.py").write_text(f'KEY = "{OPENAI_KEY}"\n')
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text(f'KEY = "{OPENAI_KEY}"\n')

    report = scan_secrets(root)

    assert report.mode == "walk"
    assert [(f.path, f.rule) for f in report.findings] == [("src/settings.py", "github-token")]


def test_plain_folder_without_gitignore(tmp_path: Path):
    (tmp_path / "a.py").write_text("x = 1\n")

    report = scan_secrets(tmp_path)

    assert [f.rule for f in report.findings] == ["gitignore-missing-env"]


def test_binary_files_are_skipped(tmp_path: Path):
    (tmp_path / ".gitignore").write_text(".env\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1" + OPENAI_KEY.encode())

    report = scan_secrets(tmp_path)

    assert report.ok
    assert "blob.bin" in report.skipped


def test_missing_folder_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_secrets(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (f'client = OpenAI(api_key="{OPENAI_KEY}")', "openai-style-key"),
        (f"key: {ANTHROPIC_KEY}", "anthropic-key"),
        (f"token = '{HF_TOKEN}'", "huggingface-token"),
        (f"export GH={GITHUB_TOKEN}", "github-token"),
        (f"aws_access_key_id = {AWS_KEY_ID}", "aws-access-key-id"),
        (f"maps = '{GOOGLE_KEY}'", "google-api-key"),
        (f"Authorization: Bearer {BEARER_VALUE}", "bearer-token"),
        (f'db_password = "{GENERIC_SECRET}"', "assigned-secret"),
        (PRIVATE_KEY_HEADER, "private-key"),
    ],
)
def test_rules_match_their_key(text: str, rule: str):
    found = find_secrets_in_text(text)

    assert [match.rule for match in found] == [rule]
    assert found[0].line == 1


@pytest.mark.parametrize(
    "text",
    [
        'api_key = os.environ["OPENAI_API_KEY"]',
        "OPENAI_API_KEY=sk-your-key-here-xxxxxxxxxxxxxxxx",
        "keys look like sk-... and are secret",
        'fixed = "sk-lab-course-key-1234"',
        'wrong = "sk-test-0123456789abcdef"',
        'password = "correct-horse-battery-staple"',
        "max_tokens = 256",
        "AKIAIOSFODNN7EXAMPLE",
        f'allowed = "{OPENAI_KEY}"  # secret-scan: allow',
    ],
)
def test_placeholders_and_allowed_lines_pass(text: str):
    assert find_secrets_in_text(text) == []


def test_dotenv_rule_only_in_env_files():
    line = "LAB_HOSTED_API_KEY=hunter22hunter"

    assert find_secrets_in_text(line) == []
    assert [m.rule for m in find_secrets_in_text(line, env_file=True)] == ["dotenv-secret"]


def test_two_keys_on_one_line_both_masked():
    text = f"first {OPENAI_KEY} then {HF_TOKEN}"

    found = find_secrets_in_text(text)

    assert [m.rule for m in found] == ["openai-style-key", "huggingface-token"]
    for match in found:
        assert OPENAI_KEY not in match.preview
        assert HF_TOKEN not in match.preview


def test_generated_keys_have_random_run():
    for seed in range(200):
        assert has_random_run(made_up("sk-proj-", 40, seed))


def test_placeholder_detection():
    assert looks_like_placeholder("sk-your-key-here")
    assert looks_like_placeholder("xxxxxxxxxxxxxxxxxxxx")
    assert not looks_like_placeholder(OPENAI_KEY)


def test_mask_secret_lengths():
    assert mask_secret(OPENAI_KEY) == OPENAI_KEY[:4] + "..." + OPENAI_KEY[-4:]
    assert mask_secret("a" * 19) == "****"
    assert mask_secret("abcd" + "x" * 12 + "wxyz") == "abcd...wxyz"
    assert mask_secret("") == "****"
    assert mask_secret(SecretStr(OPENAI_KEY)) == mask_secret(OPENAI_KEY)


def test_redact_replaces_every_copy():
    text = f"{OPENAI_KEY} and again {OPENAI_KEY}"

    redacted = redact(text, [OPENAI_KEY])

    assert OPENAI_KEY not in redacted
    assert redacted.count(mask_secret(OPENAI_KEY)) == 2


def test_env_example_lists_every_setting():
    from lab_support.settings import LabSettings

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    documented = {name.lower() for name in re.findall(r"^# (?:LAB_)([A-Z_]+)=", text, flags=re.MULTILINE)}

    assert documented == set(LabSettings.model_fields)


def test_env_example_holds_no_values():
    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()

    assert find_secrets_in_text(text, env_file=True) == []
    # Every assignment is commented out, so copying the file changes no default.
    assert not re.search(r"^\s*LAB_", text, flags=re.MULTILINE)
