"""The course kit holds both ways: every exercise's tests pass on its solution and fail on its
untouched stub, so no exercise can pass vacuously and no solution is wrong."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXERCISES = sorted(f[len("test_"):-3] for f in os.listdir(os.path.join(ROOT, "exercises"))
                   if re.fullmatch(r"test_ex\d\d_\w+\.py", f))


def outcomes(*flags):
    """{(exercise, test): "PASSED" | "FAILED"} from one run of `python -m pytest exercises`."""
    r = subprocess.run([sys.executable, "-m", "pytest", "exercises", "-q", "-rA", "-p", "no:randomly", *flags],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    found = re.findall(r"^(PASSED|FAILED) exercises/test_(ex\d\d_\w+)\.py::(\w+)", r.stdout, re.M)
    return {(ex, test): state for state, ex, test in found}, r


def test_every_exercise_has_a_stub_tests_and_a_solution():
    assert len(EXERCISES) == 13, EXERCISES
    for ex in EXERCISES:
        for path in (f"{ex}.py", f"test_{ex}.py", f"solutions/{ex}.py"):
            assert os.path.exists(os.path.join(ROOT, "exercises", path)), path


def test_solutions_pass_every_test():
    states, r = outcomes("--solutions")
    assert r.returncode == 0, r.stdout[-3000:]
    assert {ex for ex, _ in states} == set(EXERCISES)
    assert all(s == "PASSED" for s in states.values()), [k for k, s in states.items() if s != "PASSED"]


def test_untouched_stubs_fail_every_test_and_say_where_to_start():
    states, r = outcomes()
    assert r.returncode == 1
    assert {ex for ex, _ in states} == set(EXERCISES)
    passing = [k for k, s in states.items() if s != "FAILED"]
    assert not passing, f"tests that pass on an untouched stub test nothing: {passing}"
    assert "start with exercises/ex01_sequence_logprobs.py" in r.stdout
    assert "exercise 01 not done yet: implement sequence_logprobs" in r.stdout
