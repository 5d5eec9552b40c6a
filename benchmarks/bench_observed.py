"""The benchmark queue with the OpenTelemetry and Prometheus middlewares on (see bench_app.py)."""

from benchmarks.bench_app import make_queue

queue = make_queue(observed=True)
