"""conveyor beside ARQ, SAQ, Taskiq, streaq, Huey, Dramatiq, RQ and Celery, on one local Redis.

    make bench-peers                      # builds .venv-bench (the peers, from PyPI), then runs this
    .venv-bench/bin/python -m benchmarks.peers.compare --jobs 20000 --samples 300
    .venv-bench/bin/python -m benchmarks.peers.compare --only steady --steady-peers conveyor,huey,taskiq

One throwaway ``redis-server`` on a free port serves every library in turn (flushed in between);
each library runs as its own client process and its own standard worker process (see common.py
and the ``<name>_app.py`` files). Two parts: the *classic* figures (enqueue, drain, pickup after
random pauses) one library after the other, then *steady*: pickup with a job every 5 ms, in rounds
that interleave the libraries (each round runs every library once, in a rotated order), so a slow
minute of a shared machine does not fall on one library only. Prints a table per part with
conveyor's ratio to each peer, and saves ``benchmarks/results/peers/<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

PEERS = ["conveyor", "arq", "saq", "taskiq", "streaq", "huey", "dramatiq", "rq", "celery"]
# under steady load: not ARQ (a 0.5 s poll) nor RQ (a fork per job: it falls behind at 200 jobs/s)
STEADY_PEERS = ["conveyor", "huey", "taskiq", "saq", "streaq", "celery", "dramatiq"]
# figure, label, whether more is better
FIGURES = [
    ("enqueue_jobs_per_s", "enqueue jobs/s", True),
    ("drain_jobs_per_s", "drain jobs/s", True),
    ("pickup_p50_ms", "pickup p50 ms", False),
    ("pickup_p99_ms", "pickup p99 ms", False),
]


def run_peer(name: str, url: str, *args: str) -> dict[str, Any]:
    """Run one library's benchmark in its own process; its JSON figures."""
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.peers.{name}_app", *args],
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


def steady_rounds(names: list[str], url: str, samples: int, rounds: int) -> list[dict[str, Any]]:
    """Every library once per round, in a rotated order; per library, all rounds' latencies."""
    client = redis.Redis.from_url(url)
    merged: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            client.flushall()
            print(f"steady round {r + 1}/{rounds}: {name}…", file=sys.stderr, flush=True)
            got = run_peer(name, url, "--steady", str(samples))
            lat = got.pop("latencies_ms")
            print(f"  p50 {got['pickup_p50_ms']} ms, p99 {got['pickup_p99_ms']} ms, client late by "
                  f"{got['late_ms']} ms at worst", file=sys.stderr, flush=True)
            into = merged.setdefault(name, {**got, "rounds": [], "latencies_ms": []})
            into["rounds"].append({k: got[k] for k in ("pickup_p50_ms", "pickup_p99_ms", "late_ms")})
            into["latencies_ms"] += lat
    out = []
    for name in names:
        entry = merged[name]
        lat = entry.pop("latencies_ms")
        cuts = statistics.quantiles(lat, n=100, method="inclusive")
        entry.update(samples=len(lat), pickup_p50_ms=round(statistics.median(lat), 3),
                     pickup_p99_ms=round(cuts[98], 3),
                     late_ms=max(r["late_ms"] for r in entry["rounds"]))
        out.append(entry)
    return out


def steady_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of pickup under steady load, all rounds pooled, and each round's p50/p99."""
    ours = next(r for r in results if r["peer"] == "conveyor")
    head = ["library", "version", "pickup p50 ms", "pickup p99 ms", "each round p50 / p99",
            "client late, worst ms", "conveyor x, p50", "conveyor x, p99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rounds = ", ".join(f"{x['pickup_p50_ms']:.2f} / {x['pickup_p99_ms']:.2f}" for x in r["rounds"])
        cells = [r["peer"], str(r["version"]), f"{r['pickup_p50_ms']:.2f}", f"{r['pickup_p99_ms']:.2f}",
                 rounds, f"{r['late_ms']:.1f}"]
        cells += ["—", "—"] if r is ours else [
            ratio(ours["pickup_p50_ms"], r["pickup_p50_ms"], False),
            ratio(ours["pickup_p99_ms"], r["pickup_p99_ms"], False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs to enqueue and drain")
    parser.add_argument("--samples", type=int, default=300, help="pickup latency samples")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--only", default="classic,steady", help="classic, steady, or both (default)")
    parser.add_argument("--steady-peers", default=",".join(STEADY_PEERS),
                        help="comma-separated, for the steady-load part")
    parser.add_argument("--steady-samples", type=int, default=500, help="steady-load samples per round")
    parser.add_argument("--steady-rounds", type=int, default=3, help="interleaved steady-load rounds")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if parts - {"classic", "steady"}:
        parser.error(f"unknown part: {sorted(parts - {'classic', 'steady'})}")
    names, steady_names = args.peers.split(","), args.steady_peers.split(",")
    for chosen in (names, steady_names):
        if "conveyor" not in chosen:
            chosen.insert(0, "conveyor")
    results: list[dict[str, Any]] = []
    steady: list[dict[str, Any]] = []
    with redis_server() as server:
        url = server.url()
        client = redis.Redis.from_url(url)
        if "classic" in parts:
            for name in names:
                client.flushall()
                print(f"{name}…", file=sys.stderr, flush=True)
                got = run_peer(name, url, str(args.jobs), str(args.samples))
                print(f"  {got}", file=sys.stderr, flush=True)
                results.append(got)
        if "steady" in parts:
            steady = steady_rounds(steady_names, url, args.steady_samples, args.steady_rounds)
        info = client.info("server")
    if results:
        print(table(results))
    if steady:
        print(f"\npickup under steady load: a job every 5 ms doing one Redis write, "
              f"{args.steady_samples} samples x {args.steady_rounds} interleaved rounds\n")
        print(steady_table(steady))
    if not args.no_save:
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        # a folder of its own: run.py compares with the newest file of results/ itself
        path = ROOT / "benchmarks" / "results" / "peers" / f"{when}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "when": when, "jobs": args.jobs, "samples": args.samples,
            "redis": info.get("redis_version"), "cpus": os.cpu_count(),
            "load_after": os.getloadavg()[0], "results": results, "steady": steady,
            "steady_samples": args.steady_samples, "steady_rounds": args.steady_rounds,
        }, indent=2) + "\n")
        print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
