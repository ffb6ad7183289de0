#!/usr/bin/env bash
# Everything CUDA in one call, in under 10 minutes: the benchmark tables, the default pipeline
# and the test suite, on a machine with a CUDA GPU, PyTorch, tiktoken, matplotlib, numpy and
# pytest, and no internet. The repo is a plain working tree (not installed): PYTHONPATH=$PWD.
#
#   OUT=/path/to/results bash bench/gpu_check.sh      (from the repo root)
#   bash bench/gpu_check.sh /path/to/results
#
# Writes at most 8 files into the results folder: summary.md (read this first: every step's
# status and every table), throughput.json, sampling.json, partition.json, pipeline.json,
# metrics.json (the default run's), tests.log, bench.log (the scripts' full output).
# Every step has its own timeout, capped by what is left of BUDGET seconds, so one stuck step
# cannot eat the rest; a failing step is recorded and the script goes on (set -u, no -e).
# Env overrides (for a dry run on a CPU): DEVICE, BUDGET, TESTS, *_ARGS below, TQDM_SHIM=1.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=$(mkdir -p "${1:-${OUT:-gpu_out}}" && cd "${1:-${OUT:-gpu_out}}" && pwd) || exit 1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-540}  # seconds for the whole script; steps past it are skipped, and say so
TESTS=${TESTS:-tests}
PARTITION_ARGS=${PARTITION_ARGS:-}
SAMPLING_ARGS=${SAMPLING_ARGS:-}
# The MFU target (GPT-2 small, bf16, compiled) first; each compile costs tens of seconds, so
# --budget stops starting new variants; nosync+fused measure two changes to the training loop.
THROUGHPUT_ARGS=${THROUGHPUT_ARGS:---configs gpt2,default --variants compile:bfloat16,eager:bfloat16,eager:float32,eager:bfloat16:nosync+fused,compile:bfloat16:nosync+fused --budget 200}
PIPELINE_ARGS=${PIPELINE_ARGS:---runs default,quick}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
TMP=$(mktemp -d)
LOG="$OUT/bench.log"
: >"$LOG"
STATUS=""
START=$SECONDS

note() { echo "$*" | tee -a "$LOG"; STATUS+="- $*"$'\n'; }

# rpo_mini imports tqdm for progress bars; if it is missing, a no-op stand-in (never shadows a real one).
if [ "${TQDM_SHIM:-0}" = 1 ] || ! "$PY" -c "import tqdm.auto" 2>/dev/null; then
    mkdir -p "$TMP/shim/tqdm"
    cat >"$TMP/shim/tqdm/__init__.py" <<'EOF'
"""A no-op stand-in for tqdm (progress bars only), for machines without it."""
import sys


class tqdm:
    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1): pass
    def set_postfix(self, *args, **kwargs): pass
    def set_description(self, *args, **kwargs): pass
    def refresh(self): pass
    def close(self): pass

    @staticmethod
    def write(s, file=None, end="\n", nolock=False):
        print(s, end=end, file=file or sys.stdout)
EOF
    echo "from tqdm import tqdm" >"$TMP/shim/tqdm/auto.py"
    if [ "${TQDM_SHIM:-0}" = 1 ]; then export PYTHONPATH="$TMP/shim:$PYTHONPATH"; else export PYTHONPATH="$PYTHONPATH:$TMP/shim"; fi
    note "tqdm not importable (or TQDM_SHIM=1): using a no-op stand-in"
fi

# step NAME TIMEOUT LOGFILE CMD...: run CMD with a timeout capped by the budget left; record it.
step() {
    local name=$1 limit=$2 log=$3; shift 3
    local left=$((BUDGET - (SECONDS - START) - 10))
    if ((left < 20)); then note "$name: SKIPPED (budget of ${BUDGET}s spent)"; return; fi
    ((limit > left)) && limit=$left
    echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$TMP/$name.out" 2>&1
    local rc=$? took=$((SECONDS - t0))
    cat "$TMP/$name.out" >>"$log"
    if ((rc == 0)); then note "$name: ok (${took}s)"; return; fi
    if ((rc == 124 || rc == 137)); then note "$name: TIMED OUT after ${took}s (limit ${limit}s)"
    else note "$name: FAILED, exit code $rc (${took}s); see $(basename "$log")"; fi
    STATUS+=$(tail -n 8 "$TMP/$name.out" | sed 's/^/    /')$'\n'
}

{
    echo "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname 2>/dev/null || echo ?)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    echo "cpu cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
} 2>&1 | tee "$TMP/env.txt" >>"$LOG"

# The test suite pins itself to the CPU and takes minutes (~400 s on a 16-core H200 host), so on
# a machine with cores to spare it runs beside the benchmarks, on the other half of the cores
# (the benchmarks keep the first half); otherwise it runs last.
BENCH_CPUS=()
TESTS_PID=""
NPROC=$(nproc)
if [ "${TESTS_PARALLEL:-1}" = 1 ] && command -v taskset >/dev/null && ((NPROC >= 12)); then
    half=$((NPROC / 2))
    BENCH_CPUS=(taskset -c "0-$((half - 1))")
    note "tests: run beside the benchmarks on cores $half-$((NPROC - 1)); benchmarks on cores 0-$((half - 1))"
    (
        OMP_NUM_THREADS=4 timeout -k 10 "$((BUDGET - (SECONDS - START) - 20))" taskset -c "$half-$((NPROC - 1))" \
            "$PY" -m pytest $TESTS -q -p no:cacheprovider -o addopts="" --maxfail=10 >"$OUT/tests.log" 2>&1
        echo $? >"$TMP/tests.rc"
    ) &
    TESTS_PID=$!
    TESTS_T0=$SECONDS
fi

step partition 60 "$LOG" "${BENCH_CPUS[@]}" "$PY" bench/partition.py --device "$DEVICE" --json "$OUT/partition.json" --md "$TMP/partition.md" $PARTITION_ARGS
step sampling 120 "$LOG" "${BENCH_CPUS[@]}" "$PY" bench/sampling.py --device "$DEVICE" --json "$OUT/sampling.json" --md "$TMP/sampling.md" $SAMPLING_ARGS
step pipeline 200 "$LOG" "${BENCH_CPUS[@]}" "$PY" bench/pipeline.py --device "$DEVICE" --json "$OUT/pipeline.json" --md "$TMP/pipeline.md" --keep-metrics "$OUT/metrics.json" $PIPELINE_ARGS
step throughput 270 "$LOG" "${BENCH_CPUS[@]}" "$PY" bench/throughput.py --device "$DEVICE" --json "$OUT/throughput.json" --md "$TMP/throughput.md" $THROUGHPUT_ARGS
if [ -n "$TESTS_PID" ]; then
    wait "$TESTS_PID"
    rc=$(cat "$TMP/tests.rc" 2>/dev/null || echo "?") took=$((SECONDS - TESTS_T0))
    if [ "$rc" = 0 ]; then note "tests: ok (${took}s)"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note "tests: TIMED OUT after ${took}s"
    else note "tests: FAILED, exit code $rc (${took}s); see tests.log"; fi
else
    step tests 240 "$OUT/tests.log" "$PY" -m pytest $TESTS -q -p no:cacheprovider -o addopts="" --maxfail=10
fi

{
    echo "# rpo_mini GPU check"
    echo
    echo '```'
    cat "$TMP/env.txt"
    echo '```'
    echo
    echo "## Steps ($((SECONDS - START))s in all, budget ${BUDGET}s)"
    echo
    printf '%s' "$STATUS"
    echo "- pytest says: $(grep -E '(passed|failed|error)' "$OUT/tests.log" 2>/dev/null | tail -n 1)"
    echo
    for t in pipeline throughput sampling partition; do
        if [ -f "$TMP/$t.md" ]; then sed 's/^###/##/' "$TMP/$t.md"; echo
        elif [ -f "$OUT/$t.json" ]; then echo "## $t: no table (cut short); partial results in $t.json"; echo
        else echo "## $t: no result"; echo; fi
    done
} >"$OUT/summary.md"
rm -rf "$TMP"
cat "$OUT/summary.md"
