"""Where conveyor's pickup time goes under steady load: the path of each job, timestamped.

    .venv-bench/bin/python -m benchmarks.peers.conveyor_trace --samples 500
    .venv-bench/bin/python -m benchmarks.peers.conveyor_trace --py-spy worker.svg   # + a profile

Runs the steady-load shape of ``common.steady`` (a job every 5 ms, each doing one Redis write of
its own) against one CLI worker on a throwaway ``redis-server``, and stamps each job on its way:

* ``sent``: the client's ``time.time()`` just before ``enqueue``;
* ``script``: when the enqueue script ran (the handed record's ``started_at``, Redis's clock:
  one machine, so one clock);
* ``returned``: when the client's ``enqueue`` call returned;
* ``pushed``: when the worker's pub/sub listener handed the job to the backend
  (``HandOffs.on_message``);
* ``claimed``: when the worker's claim loop got it from ``backend.claim`` (a job a claim found;
  a hand-out goes from the listener straight to ``launch``);
* ``started``: the task's first line.

The worker's stamps come from wrappers installed when the worker imports this module (the worker
runs ``benchmarks.peers.conveyor_trace:queue``), around private methods of the Redis backend and
the runner: a diagnostic that may need updating when those change, never part of the figures of
``make bench-peers``. Prints the median and p99 of each stage, and of the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.peers.common import ROOT, url
from conveyor import Queue
from conveyor.backends import redis as redis_backend
from conveyor.backends.redis.handoff import HandOffs
from conveyor.worker import attempt

TRACE = "bench:trace"
MARKS: dict[str, dict[str, float]] = {}  # job id -> stage -> time.time(), in the worker
STEPS = [0]  # event-loop iterations so far, in the worker: a cost the machine's load cannot blur

queue = Queue(url(), name="bench")
_client: redis.Redis | None = None


def _install_stamps() -> None:
    """Wrap the hand-off, claim and launch steps of the worker to note when each job passed."""
    backend_cls: Any = redis_backend.RedisBackend
    hands_cls: Any = HandOffs
    on_hand, claim = hands_cls.on_message, backend_cls.claim

    def stamped_on_hand(self: Any, worker: str, data: str) -> None:
        now = time.time()
        with contextlib.suppress(ValueError, IndexError, TypeError):
            values = json.loads(data)
            marks = MARKS.setdefault(str(values[0]), {})
            marks["pushed"], marks["pushed_step"] = now, STEPS[0]
            marks["script"] = float(values[14])  # started_at: when the enqueue script ran
        on_hand(self, worker, data)

    async def stamped_claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await claim(self, *args, **kwargs)
        now = time.time()
        for r in records:
            marks = MARKS.setdefault(r.id, {})
            marks["claimed"], marks["claimed_step"] = now, STEPS[0]
            if r.started_at is not None:
                marks["script"] = r.started_at.timestamp()
        return records

    hands_cls.on_message, backend_cls.claim = stamped_on_hand, stamped_claim
    loop_cls: Any = asyncio.BaseEventLoop
    run_once = loop_cls._run_once

    def counted_run_once(self: Any) -> None:
        STEPS[0] += 1
        run_once(self)

    loop_cls._run_once = counted_run_once
    runner_cls: Any = attempt.Runner
    launch = runner_cls.launch

    def stamped_launch(self: Any, record: Any) -> None:
        MARKS.setdefault(record.id, {})["launched"] = time.time()
        launch(self, record)

    runner_cls.launch = stamped_launch


@queue.task(name="pickup")
async def pickup(sent: float) -> None:
    """Stamp the start, then the job's one Redis write: its trace."""
    started, step = time.time(), STEPS[0]
    task = asyncio.current_task()
    job_id = task.get_name().rsplit(":", 1)[-1] if task is not None else "?"
    global _client
    if _client is None:
        _client = redis.Redis.from_url(url())
    marks = MARKS.pop(job_id, {})
    _client.rpush(TRACE, json.dumps({"id": job_id, "sent": sent, "started": started,
                                     "started_step": step, **marks}))


if os.environ.get("CONVEYOR_TRACE_WORKER") == "1":
    _install_stamps()


# -- the driver ------------------------------------------------------------------------------------
STAGES = [("sent", "script", "client → enqueue script ran"),
          ("script", "returned", "script → client's enqueue returned"),
          ("script", "pushed", "script → worker's listener got the hand-off"),
          ("pushed", "claimed", "listener → claim loop took it"),
          ("pushed", "launched", "listener → launch (hand-outs)"),
          ("claimed", "launched", "claim loop → launch"),
          ("launched", "started", "launch → task's first line"),
          ("sent", "started", "whole pickup")]


def script_times(client: redis.Redis, q: Queue) -> str:
    """Redis's own time per script during the run (SLOWLOG with every command logged)."""
    scripts = getattr(getattr(q.backend, "_scripts", None), "_scripts", {})
    names = {sha: name for name, (sha, _) in scripts.items()}
    took: dict[str, list[int]] = {}
    for entry in client.slowlog_get(1_000_000):
        cmd = entry["command"].split()
        if cmd and cmd[0].upper() == b"EVALSHA" and len(cmd) > 1:
            took.setdefault(names.get(cmd[1].decode(), "?"), []).append(entry["duration"])
    lines = [f"{'script (Redis time, µs)':<46} {'p50':>8} {'p90':>8} {'p99':>8} {'calls':>8}"]
    for name, us in sorted(took.items(), key=lambda kv: -len(kv[1])):
        if len(us) < 2:
            continue
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        lines.append(f"{name:<46} {statistics.median(us):8.0f} {cuts[89]:8.0f} {cuts[98]:8.0f} "
                     f"{len(us):8d}")
    return "\n".join(lines)


async def drive(q: Queue, samples: int, interval: float, slowlog: bool) -> list[dict[str, float]]:
    """The steady-load client: ``samples`` jobs, one every ``interval`` s on an absolute timeline."""
    client = redis.Redis.from_url(url())
    returned: dict[str, float] = {}
    pickup = q.tasks["pickup"]
    async with q:
        for _ in range(20):  # warm up: the worker is up and idle
            await pickup.enqueue(time.time())
            if client.blpop([TRACE], timeout=60) is None:
                raise TimeoutError("the worker did not start a warm-up job within 60 s")
        await asyncio.sleep(0.5)
        if slowlog:  # it logs every command a script calls too: a cost of its own, so optional
            client.config_set("slowlog-log-slower-than", 0)
            client.config_set("slowlog-max-len", 1_000_000)
            client.slowlog_reset()
        t0 = time.perf_counter() + 0.01
        for i in range(samples):
            wait = t0 + i * interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            job = await pickup.enqueue(time.time())
            returned[job.id] = time.time()
        deadline = time.monotonic() + 60
        while client.llen(TRACE) < samples and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # another process fills the list: nothing to await here
        if slowlog:
            print(script_times(client, q))
    rows = [json.loads(v) for v in client.lrange(TRACE, 0, -1)]
    for row in rows:
        row["returned"] = returned.get(row["id"], float("nan"))
    return rows


def summary(rows: list[dict[str, float]]) -> str:
    lines = [f"{len(rows)} jobs; handed by the enqueue script: "
             f"{sum('pushed' in r for r in rows)}, found by a claim: {sum('pushed' not in r for r in rows)}",
             f"{'stage':<46} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"]
    for a, b, label in STAGES:
        got = [(r[b] - r[a]) * 1000 for r in rows if a in r and b in r and r[b] == r[b]]
        if len(got) < 2:
            continue
        cuts = statistics.quantiles(got, n=100, method="inclusive")
        lines.append(f"{label:<46} {statistics.median(got):8.3f} {cuts[89]:8.3f} {cuts[98]:8.3f}")
    steps = [r["started_step"] - r["pushed_step"] for r in rows if "pushed_step" in r]
    if steps:
        lines.append(f"event-loop steps from the hand-off's arrival to the task's first line: "
                     f"median {statistics.median(steps):g}, max {max(steps)}")
    return "\n".join(lines)


def main() -> int:
    from benchmarks.redis_bench import redis_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between arrivals")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="profile the worker with py-spy record --idle (FILE.svg, or .txt for "
                             "collapsed stacks)")
    parser.add_argument("--json", metavar="FILE", help="also write every job's stamps here")
    parser.add_argument("--slowlog", action="store_true",
                        help="also print Redis' own time per script (SLOWLOG of every command: it "
                             "slows every command a script calls, so the stages grow too)")
    args = parser.parse_args()
    with redis_server() as server:
        os.environ["BENCH_REDIS_URL"] = server.url()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVEYOR_TRACE_WORKER": "1"}
        cmd = [sys.executable, "-m", "conveyor", "worker", "benchmarks.peers.conveyor_trace:queue",
               "--concurrency", "100", "--log-level", "warning"]
        if args.py_spy:
            spy = Path(sys.executable).with_name("py-spy")
            fmt = "raw" if args.py_spy.endswith(".txt") else "flamegraph"  # raw: collapsed stacks
            # --nonblocking: sampling must not stop the worker (that would be the latency seen)
            cmd = [str(spy), "record", "--idle", "--nonblocking", "--rate", "250", "--format", fmt,
                   "-o", args.py_spy, "--", *cmd]
        worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        try:
            client_queue = Queue(server.url(), name="bench")  # the client's handle on this server
            client_queue.task(name="pickup")(pickup.fn)
            rows = asyncio.run(drive(client_queue, args.samples, args.interval, args.slowlog))
        finally:
            worker.send_signal(2)  # SIGINT: py-spy writes its profile, the worker stops
            worker.wait(60)
    print(summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
