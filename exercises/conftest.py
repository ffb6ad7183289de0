"""How the exercise tests find the code, and what they say about exercises not started yet.

    python -m pytest exercises               tests your files, exercises/exNN_topic.py
    python -m pytest exercises --solutions   tests exercises/solutions/exNN_topic.py instead

`EXERCISES=solutions` in the environment does the same as --solutions (handy where the
command line is not yours, e.g. an editor's test runner).

Each test takes the fixture `ex`: the module its file tests, exNN_topic for test_exNN_topic.py,
imported from exercises/ or from exercises/solutions/. A test that stops on an exercise's
`raise NotImplementedError` fails with one line naming the function to write, and the run ends
with a table of every exercise's state and the one to work on next.
"""

import importlib
import os
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STUB = re.compile(r"ex(\d\d)_\w+$")          # an exercise module: ex01_sequence_logprobs
TESTS = re.compile(r"test_(ex(\d\d)_\w+)$")   # its tests: test_ex01_sequence_logprobs
_state = {"solutions": False, "exercises": {}}


def pytest_addoption(parser):
    parser.addoption("--solutions", action="store_true",
                     help="exercises: test exercises/solutions/ instead of your files in exercises/")


def pytest_configure(config):
    _state["solutions"] = bool(config.getoption("--solutions", False)) or os.environ.get("EXERCISES") == "solutions"


def pytest_report_header(config):
    if _state["solutions"]:
        return "exercises: testing the solutions, exercises/solutions/exNN_*.py"
    return "exercises: testing your files, exercises/exNN_*.py (--solutions tests exercises/solutions/)"


def load(name):
    """The module `name` (e.g. "ex01_sequence_logprobs"): the solution under --solutions, else yours."""
    package = "exercises.solutions" if _state["solutions"] else "exercises"
    return importlib.import_module(f"{package}.{name}")


@pytest.fixture
def ex(request):
    """The module under test, named after the test file: test_exNN_topic.py tests exNN_topic."""
    match = TESTS.match(request.path.stem)
    if match is None:
        raise RuntimeError(f"{request.path.name}: the `ex` fixture is for files named test_exNN_topic.py")
    return load(match.group(1))


def _stub(excinfo):
    """(number, function, file) when a test stopped on an exercise's NotImplementedError, else None."""
    if excinfo is None or not excinfo.errisinstance(NotImplementedError):
        return None
    where = Path(excinfo.traceback[-1].path)
    match = STUB.match(where.stem)
    if where.parent != HERE or match is None:
        return None
    return match.group(1), excinfo.traceback[-1].name, where


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    match = TESTS.match(item.path.stem)
    if match is None or report.skipped or (report.when != "call" and report.passed):
        return report
    name, number = match.groups()
    counts = _state["exercises"].setdefault(number, {"name": name, "passed": 0, "todo": 0, "failed": 0})
    stub = _stub(call.excinfo) if report.when == "call" else None
    if stub is not None:
        _, function, where = stub
        report.longrepr = (f"exercise {number} not done yet: implement {function} in "
                           f"{os.path.relpath(where, item.config.rootpath)}")
        counts["todo"] += 1
    else:
        counts["passed" if report.passed else "failed"] += 1
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    result = yield   # after pytest's own summary: this is the last thing before the totals line
    exercises, tr = _state["exercises"], terminalreporter
    if not exercises:
        return result
    where = "exercises/solutions" if _state["solutions"] else "exercises"
    state = {}
    for number, c in sorted(exercises.items()):
        total = c["passed"] + c["todo"] + c["failed"]
        state[number] = ("done" if c["passed"] == total else "not started" if c["todo"] == total
                         else f"{c['passed']} of {total} tests pass")
    done = sum(s == "done" for s in state.values())
    fresh = sum(s == "not started" for s in state.values())
    tr.write_sep("=", f"exercises ({where}): {done} of {len(state)} done, {fresh} not started")
    for number, s in state.items():
        tr.write_line(f"  {number}  {exercises[number]['name'][5:]:<28} {s}")
    todo = [n for n, s in state.items() if s != "done"]
    if not todo:
        tr.write_line("every exercise here passes", bold=True)
        return result
    name = exercises[todo[0]]["name"]
    lead = (f"{fresh} exercise{'s' * (fresh > 1)} not started yet; start with" if fresh == len(state)
            else "next:")
    tr.write_line(f"{lead} {where}/{name}.py (its tests: exercises/test_{name}.py)", bold=True)
    return result
