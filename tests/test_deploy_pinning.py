"""Model pinning: floating names rejected in settings, readiness and code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab_support.deploy import UnpinnedModelError, find_unpinned_models, is_pinned, model_names_in_code, require_pinned
from lab_support.settings import PINNED_MODEL, LabSettings


@pytest.mark.parametrize(
    ("name", "pinned"),
    [
        (PINNED_MODEL, True),
        ("gpt-4o-2024-08-06", True),
        ("llama3.2:3b-instruct-q4_K_M", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", True),
        ("latest", False),
        ("LATEST", False),
        ("llama3:latest", False),
        ("claude-3-5-sonnet-latest", False),
        ("org/latest", False),
        ("stable", False),
        ("default", False),
        ("", False),
        ("   ", False),
    ],
)
def test_is_pinned_table(name: str, pinned: bool):
    assert is_pinned(name) is pinned


def test_is_pinned_rejects_non_strings():
    assert is_pinned(None) is False  # type: ignore[arg-type]


def test_require_pinned_names_value_and_setting():
    with pytest.raises(UnpinnedModelError) as raised:
        require_pinned("llama3:latest")

    message = str(raised.value)
    assert "'llama3:latest'" in message
    assert "LAB_MODEL" in message
    assert isinstance(raised.value, ValueError)


def test_require_pinned_returns_name():
    assert require_pinned(PINNED_MODEL) == PINNED_MODEL


def test_default_setting_is_pinned(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LAB_MODEL", raising=False)

    assert is_pinned(LabSettings(_env_file=None).model)


def test_setting_from_environment_fails_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAB_MODEL", "latest")

    with pytest.raises(UnpinnedModelError):
        require_pinned(LabSettings(_env_file=None).model)


def test_model_names_in_code_forms():
    source = "\n".join(
        [
            'client.chat.completions.create(model="llama3:latest", messages=[])',
            'MODEL = "gpt-4o-2024-08-06"',
            'body = {"model": "latest", "stream": True}',
            'settings.chat_model = "mistral-latest"',
            'print("model=latest is only text")',
            'other = "latest"',
        ]
    )

    assert model_names_in_code(source) == [
        (1, "llama3:latest"),
        (2, "gpt-4o-2024-08-06"),
        (3, "latest"),
        (4, "mistral-latest"),
    ]


def test_model_names_in_cell_with_magics():
    source = '%pip install x\n!ollama pull llama3\nrun(model="llama3:latest")\n'

    assert model_names_in_code(source) == [(3, "llama3:latest")]


def test_model_names_in_invalid_source_use_regex():
    source = 'this is not python\nmodel = "qwen:latest"\n'

    assert model_names_in_code(source) == [(2, "qwen:latest")]


def test_find_unpinned_models_in_files(tmp_path: Path):
    (tmp_path / ".gitignore").write_text(".env\n")
    (tmp_path / "app.py").write_text(f'MODEL = "{PINNED_MODEL}"\nFALLBACK_MODEL = "llama3:latest"\n')
    cell = {"cell_type": "code", "id": "a", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["x = 1\n", 'ask(model="latest")\n']}
    (tmp_path / "lab.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (tmp_path / "notes.txt").write_text('model="latest"\n')

    found = find_unpinned_models(tmp_path)

    assert [(f.path, f.location, f.value) for f in found] == [
        ("app.py", "line 2", "llama3:latest"),
        ("lab.ipynb", "cell 1, line 2", "latest"),
    ]
    assert "LAB_MODEL" in found[0].fix
