"""Pin the model version: reject floating names such as ``latest`` in settings and in code.

A floating name (``latest``, ``llama3:latest``, ``claude-3-5-sonnet-latest``)
points at whatever the provider or registry serves today, so answers,
latency and cost change without a deploy. A pinned name identifies one
build: ``smollm2-135m-instruct-q4_1``, ``gpt-4o-2024-08-06``,
``llama3.2:3b-instruct-q4_K_M``.

    >>> is_pinned("llama3:latest")
    False
    >>> require_pinned(get_settings().model)       # raises UnpinnedModelError for a floating name
    >>> find_unpinned_models(".")                   # model names in code and notebooks
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lab_support.deploy._files import list_repository_files

# Whole names that only ever mean "whatever is current".
FLOATING_NAMES = frozenset({"latest", "stable", "current", "default", "newest"})
# A name segment or tag with this value makes any name floating.
FLOATING_SEGMENT = "latest"
# Identifiers whose string value is taken to be a model name.
MODEL_NAME_PATTERN = re.compile(r"(?i)^(?:\w*_)?model(?:_?(?:name|id))?$")
# Fallback for cells that are not valid Python (shell commands, magics).
MODEL_ASSIGNMENT_PATTERN = re.compile(r"""(?i)\bmodel(?:_?(?:name|id))?\b["']?\s*[=:]\s*["']([^"'\n]*)["']""")

FIX_UNPINNED = (
    "replace {value!r} with an exact, versioned model name, and read it from the settings "
    "(LAB_MODEL) instead of writing it in code"
)


class UnpinnedModelError(ValueError):
    """A model name that floats (``latest``) where a pinned version is required."""


@dataclass(frozen=True)
class UnpinnedModel:
    """A floating model name found in a file: where it is and the name itself."""

    path: str
    location: str
    value: str
    fix: str


def is_pinned(name: str) -> bool:
    """Return whether ``name`` names one fixed model version rather than a moving alias.

    Empty names, the bare words in FLOATING_NAMES, and names with a ``latest``
    segment or tag (``x:latest``, ``x-latest``, ``x/latest``) are floating.
    """
    if not isinstance(name, str):
        return False
    normalized = name.strip().lower()
    if not normalized or normalized in FLOATING_NAMES:
        return False
    segments = re.split(r"[-:/_.@]", normalized)
    return FLOATING_SEGMENT not in segments


def require_pinned(name: str, *, setting: str = "LAB_MODEL") -> str:
    """Return ``name`` when it is pinned; otherwise raise UnpinnedModelError naming the setting to change."""
    if not is_pinned(name):
        raise UnpinnedModelError(
            f"model {name!r} is not pinned: it floats to whatever version is current. "
            f"Set {setting} to an exact version, for example 'smollm2-135m-instruct-q4_1' "
            "or 'gpt-4o-2024-08-06'."
        )
    return name


def _model_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Return ``(line, value)`` for string constants bound to model-like names in a syntax tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg and MODEL_NAME_PATTERN.match(node.arg):
            value = node.value
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)] + [
                t.attr for t in targets if isinstance(t, ast.Attribute)
            ]
            if not any(MODEL_NAME_PATTERN.match(name) for name in names):
                continue
            value = node.value
        elif isinstance(node, ast.Dict):
            for key, item in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and MODEL_NAME_PATTERN.match(key.value):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        found.append((item.lineno, item.value))
            continue
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.append((value.lineno, value.value))
    return found


def model_names_in_code(source: str) -> list[tuple[int, str]]:
    """Return ``(line, name)`` for each model name written as a literal in Python source.

    Jupyter magics and shell lines (``%``, ``!``) are blanked first. Source
    that still does not parse is searched with a regular expression.
    """
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return [
            (number, match.group(1))
            for number, line in enumerate(lines, start=1)
            for match in MODEL_ASSIGNMENT_PATTERN.finditer(line)
        ]
    return sorted(_model_strings(tree))


def _code_units(root: Path, relative_path: str) -> list[tuple[str, str]]:
    """Return ``(source, location prefix)`` for a .py file or for each code cell of a notebook."""
    text = (root / relative_path).read_text(encoding="utf-8", errors="replace")
    if relative_path.endswith(".py"):
        return [(text, "line")]
    try:
        nb = json.loads(text)
    except json.JSONDecodeError:
        return []
    units = []
    for number, cell in enumerate(nb.get("cells") or [], start=1):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source")
            source = "".join(source) if isinstance(source, list) else str(source or "")
            units.append((source, f"cell {number}, line"))
    return units


def find_unpinned_models(root: str | Path = ".") -> list[UnpinnedModel]:
    """Return every floating model name written in the Python files and notebooks under ``root``."""
    repo = list_repository_files(root)
    found = []
    for relative_path in repo.files:
        if not relative_path.endswith((".py", ".ipynb")):
            continue
        for source, prefix in _code_units(repo.root, relative_path):
            for line, value in model_names_in_code(source):
                if not is_pinned(value):
                    found.append(UnpinnedModel(relative_path, f"{prefix} {line}", value, FIX_UNPINNED.format(value=value)))
    return found
