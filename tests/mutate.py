"""Mutation check: plant one small bug at a time in every module and see whether the tests notice.

    python tests/mutate.py                      # every module, 6 mutants each (~1 h on 2 CPU cores)
    python tests/mutate.py --modules rewards,exact --per-module 10
    python tests/mutate.py --list               # the mutants only, nothing run

A mutant changes one operator or constant of the module's code (+ ↔ −, * ↔ /, < ↔ ≤, > ↔ ≥, == ↔ !=,
and ↔ or, a number n → n + 1, a unary minus dropped), chosen at random with a fixed seed among
every such place outside docstrings. Each mutant is written into a copy of the repository (the
working tree is never touched) and the tests of that module (`TESTS`) run on the copy; the mutant
is *caught* when they fail. Every set of tests first runs once unmutated and must pass there. A mutant that survives is either a real hole in the tests, to be
pinned with a test against a hand-worked value, or a change that cannot alter behaviour (an
equivalent mutant), which the report shows for a reader to judge.

Output: one line per mutant, and a table of caught / planted per module; `--json PATH` saves both.
"""

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module → the tests that cover it (the fast ones where a module's file also holds end-to-end runs).
TESTS = {
    "rpo_mini/align.py": ["tests/test_align.py"],
    "rpo_mini/checkpoint.py": ["tests/test_reliability.py::test_a_crafted_pickle_is_refused_without_running_it",
                               "tests/test_reliability.py::test_truncated_corrupted_and_mismatched_checkpoints_give_clear_messages",
                               "tests/test_flags.py::test_sample_tells_a_file_that_is_not_a_checkpoint_from_a_damaged_one"],
    "rpo_mini/collect.py": ["tests/test_collect.py"],
    "rpo_mini/config.py": ["tests/test_stages.py", "tests/test_flags.py"],
    "rpo_mini/data.py": ["tests/test_data.py", "tests/test_align.py"],
    "rpo_mini/evaluate.py": ["tests/test_evaluate.py"],
    "rpo_mini/exact.py": ["tests/test_exact.py -k 'not arithmetic_run and not same_seed and not whole_response_space "
                          "and not refused and not exact_estimator_trains'"],
    "rpo_mini/files.py": ["tests/test_cache.py::test_check_compares_size_and_digest",
                          "tests/test_stages.py::test_json_is_strict_and_writes_are_atomic"],
    "rpo_mini/losses.py": ["tests/test_losses.py"],
    "rpo_mini/model.py": ["tests/test_model.py"],
    "rpo_mini/pretrain.py": ["tests/test_training.py"],
    "rpo_mini/report.py": ["tests/test_stages.py"],
    "rpo_mini/rewards.py": ["tests/test_rewards.py"],
    "rpo_mini/runtime.py": ["tests/test_reliability.py::test_cuda_requested_without_cuda",
                            "tests/test_training.py"],
    "rpo_mini/sample.py": ["tests/test_flags.py -k sample"],
    "rpo_mini/sampling.py": ["tests/test_model.py", "tests/test_collect.py"],
    "rpo_mini/stages.py": ["tests/test_stages.py"],
    "rpo_mini/tokenizer.py": ["tests/test_tokenizer.py"],
    "rpo_mini/training.py": ["tests/test_training.py"],
    "rpo_mini/worlds.py": ["tests/test_worlds.py"],
    "train.py": ["tests/test_pipeline.py"],
    "experiments/stats.py": ["tests/test_experiments.py -k 'not quick and not writeup'"],
    "experiments/tables.py": ["tests/test_experiments.py"],
    "experiments/runner.py": ["tests/test_experiments.py", "tests/test_flags.py -k experiment"],
    "experiments/__main__.py": ["tests/test_experiments.py", "tests/test_flags.py -k experiment"],
    **{f"experiments/{name}.py": ["tests/test_experiments.py"]
       for name in ("frontier", "exact_world", "gap", "heterogeneity", "paper", "variance", "cost")},
}

SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
         ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And}


def _docstrings(tree) -> set:
    """The ids of every docstring's Constant node (never mutated)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def sites(source: str) -> list:
    """Every place one mutation can go: (index in walk order, kind, line, description)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    out = []
    for i, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", None)
        if isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
            out.append((i, "op", line, f"{type(node.op).__name__} → {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAPS:
            out.append((i, "op", line, f"{type(node.op).__name__} → {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
            out.append((i, "cmp", line, f"{type(node.ops[0]).__name__} → {SWAPS[type(node.ops[0])].__name__}"))
        elif (isinstance(node, ast.Constant) and id(node) not in skip and type(node.value) in (int, float)
              and not isinstance(node.value, bool)):
            out.append((i, "num", line, f"{node.value!r} → {node.value + 1!r}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            out.append((i, "neg", line, "unary minus dropped"))
    return out


def mutate(source: str, site) -> str:
    """The module's source with the mutation at `site` applied (re-printed by ast.unparse)."""
    tree = ast.parse(source)
    index, kind = site[0], site[1]
    for i, node in enumerate(ast.walk(tree)):
        if i != index:
            continue
        if kind == "op":
            node.op = SWAPS[type(node.op)]()
        elif kind == "cmp":
            node.ops = [SWAPS[type(node.ops[0])]()]
        elif kind == "num":
            node.value = node.value + 1
        elif kind == "neg":
            return _replace_unary(tree, node)
        return ast.unparse(tree)
    raise ValueError(f"no node {index}")


def _replace_unary(tree, target) -> str:
    class Drop(ast.NodeTransformer):
        def visit_UnaryOp(self, node):
            self.generic_visit(node)
            return node.operand if node is target else node
    return ast.unparse(Drop().visit(tree))


def plan(modules: list, per_module: int, seed: int) -> list:
    out = []
    for module in modules:
        with open(os.path.join(ROOT, module)) as f:
            found = sites(f.read())
        rng = random.Random(f"{seed}:{module}")
        out += [(module, s) for s in sorted(rng.sample(found, min(per_module, len(found))))]
    return out


def copy_repo(dst: str) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "out", "__pycache__", "*.egg-info", ".ipynb_checkpoints")
    shutil.copytree(ROOT, dst, ignore=ignore, dirs_exist_ok=True)


def run_tests(repo: str, module: str, timeout: int) -> tuple[bool, float]:
    """(caught?, seconds): the module's tests on the copy; a failure, error or timeout catches."""
    args = " ".join(TESTS[module])
    cmd = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -o addopts='' {args}"
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": repo})
        caught = r.returncode != 0
    except subprocess.TimeoutExpired:
        caught = True
    return caught, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", default="", help="comma-separated names (e.g. rewards,exact,stats); default: all")
    p.add_argument("--per-module", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=600, help="seconds per mutant's tests (a timeout counts as caught)")
    p.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    p.add_argument("--json", default="", help="also save the results here")
    args = p.parse_args(argv)
    wanted = {m.strip() for m in args.modules.split(",") if m.strip()}
    modules = [m for m in TESTS if not wanted or os.path.splitext(os.path.basename(m))[0] in wanted]
    if args.per_module < 1 or not modules:
        print("error: nothing to mutate (check --modules and --per-module)", file=sys.stderr)
        return 2
    mutants = plan(modules, args.per_module, args.seed)
    if args.list:
        for module, (_, kind, line, what) in mutants:
            print(f"{module}:{line}  {what}")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        copy_repo(repo)
        for tests in sorted({tuple(TESTS[m]) for m, _ in mutants}):  # unmutated, each must pass
            module = next(m for m, _ in mutants if tuple(TESTS[m]) == tests)
            failed, seconds = run_tests(repo, module, args.timeout)
            print(f"[baseline] {'FAILED' if failed else 'passed'} {' '.join(tests)}  ({seconds:.0f}s)", flush=True)
            if failed:
                print("error: these tests fail without any mutation; fix them first", file=sys.stderr)
                return 2
        for n, (module, site) in enumerate(mutants, 1):
            path = os.path.join(repo, module)
            with open(path) as f:
                original = f.read()
            try:
                with open(path, "w") as f:
                    f.write(mutate(original, site))
                caught, seconds = run_tests(repo, module, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            results.append({"module": module, "line": site[2], "mutation": site[3], "caught": caught,
                            "seconds": round(seconds, 1)})
            print(f"[{n:>3}/{len(mutants)}] {'caught  ' if caught else 'SURVIVED'} {module}:{site[2]}  {site[3]}"
                  f"  ({seconds:.0f}s)", flush=True)
    print("\n| module | caught / planted |\n|---|---|")
    for module in modules:
        rows = [r for r in results if r["module"] == module]
        print(f"| {module} | {sum(r['caught'] for r in rows)} / {len(rows)} |")
    total = sum(r["caught"] for r in results)
    print(f"| **all** | **{total} / {len(results)}** |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "per_module": args.per_module, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
