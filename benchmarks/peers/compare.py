"""conveyor beside ARQ, SAQ, Taskiq, streaq, Dramatiq, RQ and Celery, on one local Redis.

    make bench-peers                      # builds .venv-bench (the peers, from PyPI), then runs this
    .venv-bench/bin/python -m benchmarks.peers.compare --jobs 20000 --samples 300

One throwaway ``redis-server`` on a free port serves every library in turn (flushed in between);
each library runs as its own client process and its own standard worker process (see common.py
and the ``<name>_app.py`` files). Prints a table with conveyor's ratio to each peer, and saves
``benchmarks/results/peers/<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks.redis_bench import redis_server  # noqa: E402

PEERS = ["conveyor", "arq", "saq", "taskiq", "streaq", "dramatiq", "rq", "celery"]
# figure, label, whether more is better
FIGURES = [
    ("enqueue_jobs_per_s", "enqueue jobs/s", True),
    ("drain_jobs_per_s", "drain jobs/s", True),
    ("pickup_p50_ms", "pickup p50 ms", False),
    ("pickup_p99_ms", "pickup p99 ms", False),
]


def run_peer(name: str, url: str, jobs: int, samples: int) -> dict[str, Any]:
    """Run one library's benchmark in its own process; its JSON figures."""
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.peers.{name}_app", str(jobs), str(samples)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def ratio(ours: float, theirs: float, higher_better: bool) -> str:
    """conveyor's advantage as a factor: > 1 means conveyor is better."""
    if not ours or not theirs:
        return "-"
    return f"{(ours / theirs if higher_better else theirs / ours):.1f}x"


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: each peer's figures and conveyor's ratio to them."""
    ours = next(r for r in results if r["peer"] == "conveyor")
    head = ["library", "version"] + [label for _, label, _ in FIGURES] + [
        "conveyor x, drain", "conveyor x, p50", "conveyor x, p99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["peer"], str(r["version"])]
        cells += [f"{r[key]:,.0f}" if more else f"{r[key]:.2f}" for key, _, more in FIGURES]
        if r is ours:
            cells += ["—", "—", "—"]
        else:
            cells += [ratio(ours["drain_jobs_per_s"], r["drain_jobs_per_s"], True),
                      ratio(ours["pickup_p50_ms"], r["pickup_p50_ms"], False),
                      ratio(ours["pickup_p99_ms"], r["pickup_p99_ms"], False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs to enqueue and drain")
    parser.add_argument("--samples", type=int, default=300, help="pickup latency samples")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    names = args.peers.split(",")
    if "conveyor" not in names:
        names.insert(0, "conveyor")
    results = []
    with redis_server() as server:
        url = server.url()
        client = redis.Redis.from_url(url)
        for name in names:
            client.flushall()
            print(f"{name}…", file=sys.stderr, flush=True)
            got = run_peer(name, url, args.jobs, args.samples)
            print(f"  {got}", file=sys.stderr, flush=True)
            results.append(got)
        info = client.info("server")
    out = table(results)
    print(out)
    if not args.no_save:
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        # a folder of its own: run.py compares with the newest file of results/ itself
        path = ROOT / "benchmarks" / "results" / "peers" / f"{when}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "when": when, "jobs": args.jobs, "samples": args.samples,
            "redis": info.get("redis_version"), "cpus": os.cpu_count(),
            "load_after": os.getloadavg()[0], "results": results,
        }, indent=2) + "\n")
        print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
