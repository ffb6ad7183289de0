"""What every benchmark shares: timing with warm-up and repeats, device sync, the machine's
description, the device's peak FLOP/s, a markdown table, and JSON output.

Timings are wall-clock medians over repeats, measured after warm-up (which also absorbs
torch.compile and CUDA start-up). On a GPU every timed region ends with a synchronize, so
the clock stops when the device has finished, not when Python has queued the work.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python bench/x.py` from anywhere: the package sits next to bench/
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from rpo_mini import runtime  # noqa: E402

_load_at_start = None  # the load average when the benchmark began (set by setup)


def add_args(parser) -> None:
    """The options every benchmark has."""
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--md", default=None, help="write the markdown table here")


def setup(args) -> torch.device:
    """Apply --threads, return the --device."""
    global _load_at_start
    _load_at_start = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    return runtime.pick_device(args.device)


def sync(device) -> None:
    """Wait for the device to finish the queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup: int = 1, repeats: int = 5, max_seconds: float | None = None) -> dict:
    """Run fn() `warmup` times untimed, then `repeats` times timed; seconds per call.

    With max_seconds, stop repeating once the timed calls add up to that (at least one runs).
    Returns {"median", "min", "max", "all", "first"}: `first` is the first warm-up call
    (compilation and caches included), or None without warm-up."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and sum(times) >= max_seconds:
            break
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "all": times, "first": first}


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> dict:
    """Where a number was measured: enough to tell two machines apart, nothing private."""
    device = torch.device(device)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": str(device), "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_1_5_15": load_average(),
            "load_average_at_start": _load_at_start,
            "python": platform.python_version(), "torch": torch.__version__,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{p.major}.{p.minor}")
    return info


def describe(info: dict) -> str:
    """One line naming the machine, for the top of a table."""
    dev = info.get("gpu") or f"{info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads)"
    load = info.get("load_average_1_5_15")
    return (f"{dev}; torch {info['torch']}; {info['date']}"
            + (f"; load average (1 min) {info['load_average_at_start'][0]:.2f} at the start, "
               f"{load[0]:.2f} at the end" if load and info.get("load_average_at_start") else ""))


# Dense peak FLOP/s of NVIDIA cards by precision (vendor data sheets, without sparsity).
# The H200 is the H100 SXM chip with more and faster memory: same compute peaks.
GPU_PEAKS = {  # name fragment: (fp32 non-tensor-core, tf32 tensor core, bf16/fp16 tensor core)
    "H100 PCIe": (51e12, 378e12, 756e12),
    "H100 NVL": (60e12, 418e12, 835e12),
    "H100": (67e12, 495e12, 989e12),  # SXM
    "H200": (67e12, 495e12, 989e12),
    "GH200": (67e12, 495e12, 989e12),
    "A100": (19.5e12, 156e12, 312e12),
    "L4": (30e12, 60e12, 121e12),
}


def gpu_peak(name: str, precision: str):
    """(FLOP/s, source) for a CUDA card and "float32" / "tf32" / "bfloat16" / "float16"."""
    col = {"float32": 0, "tf32": 1, "bfloat16": 2, "float16": 2}[precision]
    for fragment, peaks in GPU_PEAKS.items():  # most specific fragments first
        if fragment in name:
            return peaks[col], f"{fragment} data sheet, dense {precision}"
    return None, f"unknown card {name!r}: no peak, MFU n/a"


_gemm_cache = {}


def cpu_gemm_rate(dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large matmul on the CPU threads torch uses (the best of a few calls).

    Not used as an MFU peak: a VM's clock, vector width and SMT are unknown, and on a shared
    machine the rate moves with the neighbours' load. It gives the achieved rates a scale."""
    key = (dtype, n)
    if key not in _gemm_cache:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        _gemm_cache[key] = 2 * n ** 3 / measure(lambda: a @ b, "cpu", warmup=1, repeats=repeats)["min"]
    return _gemm_cache[key]


def peak_flops(device, precision: str):
    """(FLOP/s or None, where it comes from) for MFU: the data-sheet figure of a known GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), precision)
    return None, f"{device.type}: no trustworthy peak, MFU n/a"


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table; columns are (key, header, format spec); None prints as n/a."""
    def cell(row, key, fmt):
        v = row.get(key)
        if v is None:
            return "n/a"
        return format(v, fmt) if fmt else str(v)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, f) for k, h, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(title: str, info: dict, text: str, json_path=None, md_path=None, payload=None) -> str:
    """Print the table under a heading naming the machine; optionally write JSON and markdown."""
    md = f"### {title}\n\n{describe(info)}. Command: `{info['command']}`\n\n{text}\n"
    print(md, flush=True)
    if json_path:
        write_json(json_path, {"machine": info, **(payload or {})})
    if md_path:
        os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
        with open(md_path, "w") as f:
            f.write(md)
    return md


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]
