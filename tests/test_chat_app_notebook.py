"""Lab 03's exercises, run in this process: the solution passes every check, common wrong answers fail.

Each tests cell of ``solutions/03_streaming_route.ipynb`` runs in grading
mode (``check()`` raises when a visible case fails), after either the
solution's answer cell or a wrong answer. The setup cell's imports run
first; its model and provider are not started, because no exercise needs
them. Running the whole notebook is left to nbval and ``serving-lab grade``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from lab_support.grading import CheckFailed
from lab_support.grading.checking import GRADING_ENV

NOTEBOOK = Path(__file__).resolve().parents[1] / "solutions" / "03_streaming_route.ipynb"
SETUP_CELL = "lab03-02"
SERVER_START_LINE = "backend = start_backend()"
EXERCISES = ("03.validate", "03.upstream_errors", "03.sse_event", "03.relay", "03.deadline", "03.checkpoint")


def exercise_cells() -> dict[str, dict[str, str]]:
    """Return ``{exercise: {"solution": source, "tests": source}}`` from the solution notebook."""
    cells: dict[str, dict[str, str]] = {}
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        marks = cell.metadata.get("serving_lab")
        if marks:
            cells.setdefault(marks["exercise"], {})[marks["role"]] = cell.source
    return cells


def setup_imports() -> str:
    cell = next(cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.get("id") == SETUP_CELL)
    imports, found, _ = cell.source.partition(SERVER_START_LINE)
    assert found, f"the setup cell {SETUP_CELL} no longer starts the model with {SERVER_START_LINE!r}"
    return imports


def run_exercise(exercise: str, answer_source: str) -> None:
    """Run the setup imports, the solutions of earlier exercises, ``answer_source`` and the exercise's tests cell.

    Later answers build on earlier ones (``relay_events`` calls ``sse_event``),
    as they do in the notebook.
    """
    cells = exercise_cells()
    namespace: dict = {}
    exec(compile(setup_imports(), "setup", "exec"), namespace)
    for earlier in EXERCISES[: EXERCISES.index(exercise)]:
        exec(compile(cells[earlier]["solution"], f"{earlier} solution", "exec"), namespace)
    exec(compile(answer_source, f"{exercise} answer", "exec"), namespace)
    exec(compile(cells[exercise]["tests"], f"{exercise} tests", "exec"), namespace)


@pytest.fixture(autouse=True)
def grading_mode(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")


def test_notebook_declares_exercises():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    declared = nb.metadata["serving_lab"]["exercises"]

    assert set(declared) == set(EXERCISES)
    assert set(exercise_cells()) == set(EXERCISES)
    for exercise, roles in exercise_cells().items():
        assert set(roles) == {"solution", "tests"}, exercise


@pytest.mark.parametrize("exercise", EXERCISES)
def test_solution_passes_visible_and_hidden_tests(exercise):
    run_exercise(exercise, exercise_cells()[exercise]["solution"])


# Each wrong answer passes the visible cases, so only the hidden tests catch it.
WRONG_ANSWERS = {
    "reads the whole body before the size check": (
        "03.validate",
        '''
async def read_chat_request(request):
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, "too large")
    try:
        data = json.loads(body)
    except ValueError:
        raise HTTPException(400, "not JSON") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as error:
        raise HTTPException(422, describe_validation_error(error)) from None
''',
    ),
    "relays the upstream error body": (
        "03.upstream_errors",
        '''
def error_for_upstream(failure):
    if isinstance(failure, httpx.Response):
        if failure.status_code == 429:
            return HTTPException(429, failure.text, headers={"Retry-After": failure.headers.get("Retry-After", "")})
        return HTTPException(502, f"upstream said: {failure.text}")
    if isinstance(failure, httpx.TimeoutException):
        return HTTPException(504, "timed out")
    return HTTPException(502, str(failure))
''',
    ),
    "passes an upstream 4xx status through": (
        "03.upstream_errors",
        '''
def error_for_upstream(failure):
    if isinstance(failure, httpx.Response):
        headers = {"Retry-After": failure.headers["Retry-After"]} if "Retry-After" in failure.headers else None
        status = 502 if failure.status_code >= 500 else failure.status_code
        return HTTPException(status, "the model provider failed", headers=headers)
    if isinstance(failure, (httpx.TimeoutException, DeadlineExceeded)):
        return HTTPException(504, "timed out")
    return HTTPException(502, "unreachable")
''',
    ),
    "writes newlines into the data line": (
        "03.sse_event",
        '''
def sse_event(data, event=None):
    text = json.dumps(data).replace("\\\\n", "\\n")
    return (f"event: {event}\\n" if event else "") + f"data: {text}\\n\\n"
''',
    ),
    "buffers the whole answer": (
        "03.relay",
        '''
async def relay_events(chunks):
    pieces, finish_reason = [], None
    try:
        async for chunk in chunks:
            finish_reason = chunk.finish_reason or finish_reason
            if chunk.text:
                pieces.append(sse_event({"delta": chunk.text}))
    except StreamError as error:
        for piece in pieces:
            yield piece
        yield error_event(error)
        return
    for piece in pieces:
        yield piece
    yield sse_event({"finish_reason": finish_reason}, event="done")
''',
    ),
    "puts the upstream's error text in the error event": (
        "03.relay",
        '''
async def relay_events(chunks):
    finish_reason = None
    try:
        async for chunk in chunks:
            finish_reason = chunk.finish_reason or finish_reason
            if chunk.text:
                yield sse_event({"delta": chunk.text})
    except StreamError as error:
        code = "incomplete" if isinstance(error, IncompleteStreamError) else "upstream_error"
        yield sse_event({"message": str(error), "code": code}, event="error")
        return
    yield sse_event({"finish_reason": finish_reason}, event="done")
''',
    ),
    "checks the deadline only between items": (
        "03.deadline",
        '''
async def with_deadline(items, seconds):
    started = time.monotonic()
    async for item in items:
        if time.monotonic() - started > seconds:
            raise DeadlineExceeded(seconds)
        yield item
''',
    ),
    "answers the checkpoint twice with one text": (
        "03.checkpoint",
        '''
ANSWER = "The API key must stay secret on the server, and streaming shows the first words of the answer much sooner."
CHECKPOINT = {"why_a_server_route": ANSWER, "what_streaming_improves": ANSWER}
''',
    ),
}


@pytest.mark.parametrize(("exercise", "source"), WRONG_ANSWERS.values(), ids=WRONG_ANSWERS.keys())
def test_hidden_tests_catch_wrong_answer(exercise, source):
    with pytest.raises((AssertionError, TimeoutError)) as raised:
        run_exercise(exercise, source)

    assert not isinstance(raised.value, CheckFailed), f"the visible cases already reject it: {raised.value}"
