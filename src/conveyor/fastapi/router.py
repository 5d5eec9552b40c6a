"""The job router: ``app.include_router(queue.router(), prefix="/jobs")``.

=======  ======================  ===========================================================
GET      ``/jobs``               list jobs of the queue, newest first (``status``, ``task``,
                                 ``limit`` at most 500, ``offset`` at most 10,000)
GET      ``/jobs/stats``         how many jobs are in each status
GET      ``/jobs/metrics``       Prometheus metrics (``metrics=True`` only; conveyor[prometheus])
GET      ``/jobs/ui``            the HTML dashboard (``dashboard=True`` only)
GET      ``/jobs/{id}``          one job record (404 unknown id, 422 malformed id)
GET      ``/jobs/{id}/events``   Server-Sent Events until the job ends (``Last-Event-ID`` resumes)
POST     ``/jobs/{id}/cancel``   cancel a waiting or running job (409 once finished)
POST     ``/jobs/{id}/retry``    put a failed, dead or cancelled job back (409 otherwise)
=======  ======================  ===========================================================

Only jobs of the router's queue are served: a job of another queue on the same backend is a 404
on every route, and cancel/retry leave it alone. No GET changes anything; every POST needs the
header ``X-Conveyor`` (any value; the dashboard sends ``X-Conveyor: 1``), which a cross-site form
cannot send (a cross-origin ``fetch`` with it needs a CORS preflight), else it is a 403.
``dependencies=[Depends(auth)]`` guards every route, the dashboard too; a router built without
any logs a warning, unless ``public=True`` says it is open on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Response
from fastapi import status as http
from fastapi.responses import HTMLResponse

from conveyor.errors import ConfigError, JobNotFound, OptionError
from conveyor.fastapi.dashboard import render_dashboard
from conveyor.fastapi.schemas import JobEventOut, JobOut, JobPage, ProblemOut, StatsOut
from conveyor.fastapi.sse import EventStreamResponse, job_stream
from conveyor.model import JobRecord, JobStatus

if TYPE_CHECKING:
    from conveyor.queue import Queue

__all__ = ["CSRF_HEADER", "MAX_OFFSET", "APIRouter", "job_router"]

log = logging.getLogger("conveyor.fastapi")

#: the header every state-changing request must carry (cross-site forms cannot send one)
CSRF_HEADER = "X-Conveyor"
#: the deepest page ``GET /jobs`` serves: no request walks a whole queue
MAX_OFFSET = 10_000

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

JobId = Annotated[
    str,
    Path(
        pattern=UUID_PATTERN, description="the job's id (a UUID)",
        examples=["01936f4e-8a1b-7c3d-9e2f-0a1b2c3d4e5f"],
    ),
]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ProblemOut, "description": "No such job"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ProblemOut, "description": "The job is not in a state that allows this"}
}
# the stream as OpenAPI 3.2 describes Server-Sent Events: each item's `data` is a JobEventOut
_EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One event per status change or progress report, until the job ends.",
        "content": {"text/event-stream": {"itemSchema": {
            "type": "object",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "description": "the event's seq: send it as Last-Event-ID"},
                "event": {"type": "string", "enum": ["status", "progress"]},
                "data": {
                    "type": "string", "contentMediaType": "application/json",
                    "contentSchema": JobEventOut.model_json_schema(),
                },
                "retry": {"type": "integer", "minimum": 0},
            },
        }}},
    },
    204: {"description": "The job has finished and the client has seen all of its events"},
    404: {
        "description": "No such job",
        "content": {"application/json": {"schema": ProblemOut.model_json_schema()}},
    },
}
_CsrfHeader = Annotated[
    str | None,
    Header(
        alias=CSRF_HEADER,
        description="required on every POST (any value, e.g. 1): a cross-site form cannot send it",
    ),
]
_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ProblemOut, "description": "The X-Conveyor header is missing"}
}
# an event seq is a 64-bit integer in every store; a larger one is a 422, not a 500
_MAX_SEQ = 2**63 - 1
_RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})
_CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.CANCELLED})


def job_router(
    queue: Queue, *, dashboard: bool = False, dependencies: Sequence[Any] | None = None,
    tags: list[str] | None = None, heartbeat: float = 15.0, public: bool = False,
    metrics: bool = False,
) -> APIRouter:
    """Build the REST, SSE, (``dashboard=True``) HTML and (``metrics=True``) metrics routes over
    ``queue``'s jobs."""
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 0 < heartbeat < 3600:
        raise OptionError(f"heartbeat must be seconds between 0 and 3600, got {heartbeat!r}")
    if not isinstance(public, bool):
        raise OptionError(f"public= must be a bool, got {public!r}")
    guards = list(dependencies or [])
    if not guards and not public:
        log.warning(
            "the job router of queue %r has no dependencies: anyone who can reach it reads every "
            "job's arguments, results and tracebacks, and can cancel and retry jobs. Guard it with "
            "queue.router(dependencies=[Depends(auth)]), or pass public=True if it is open on "
            "purpose (e.g. behind an authenticating proxy)", queue.name,
        )
    router = APIRouter(dependencies=guards, tags=list(tags or ["jobs"]))

    async def find(job_id: str) -> JobRecord:
        """The job's record, or a 404 when there is none *in this queue*."""
        try:
            record = await queue.job(job_id.lower()).info()
        except JobNotFound:
            record = None
        # a job of another queue on the same backend is not this router's: the same 404 as an
        # unknown id, so the router does not even tell that it exists
        if record is None or record.queue != queue.name:
            raise HTTPException(http.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
        return record

    def require_csrf_header(value: str | None) -> None:
        if not value:
            raise HTTPException(
                http.HTTP_403_FORBIDDEN,
                f"state-changing requests need the header {CSRF_HEADER}: 1 (a guard against "
                "cross-site requests)",
            )

    @router.get("", name="conveyor_list_jobs", summary="List jobs")
    async def list_jobs(
        status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
        task: Annotated[str | None, Query(description="only jobs of this task name")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="at most 10,000")] = 0,
    ) -> JobPage:
        """Jobs of the queue, newest first, one page at a time."""
        records = await queue.list_jobs(status=status, task=task, limit=limit + 1, offset=offset)
        more = len(records) > limit
        return JobPage(
            items=[JobOut.of(r) for r in records[:limit]], limit=limit, offset=offset,
            # past MAX_OFFSET there is no next page: narrow the list with status= or task=
            next_offset=offset + limit if more and offset + limit <= MAX_OFFSET else None,
        )

    @router.get("/stats", name="conveyor_job_stats", summary="Count jobs by status")
    async def job_stats() -> StatsOut:
        """How many jobs of the queue are in each status."""
        counts = await queue.stats()
        return StatsOut(
            queue=queue.name, counts={JobStatus(k): v for k, v in counts.items()},
            total=sum(counts.values()),
        )

    if metrics:
        _metrics_route(router, queue)

    if dashboard:

        @router.get(
            "/ui", name="conveyor_dashboard", summary="Dashboard", response_class=HTMLResponse,
        )
        async def dashboard_page() -> HTMLResponse:
            """The HTML dashboard: counts, recent and failed jobs, live progress, cancel/retry."""
            page, nonce = render_dashboard(queue)
            return HTMLResponse(page, headers=_dashboard_headers(nonce))

    @router.get("/{job_id}", name="conveyor_get_job", summary="Get a job", responses=_NOT_FOUND)
    async def get_job(job_id: JobId) -> JobOut:
        """The job's stored record: status, arguments, attempts, result or error, progress."""
        return JobOut.of(await find(job_id))

    @router.get(
        "/{job_id}/events", name="conveyor_job_events", summary="Follow a job (Server-Sent Events)",
        response_class=EventStreamResponse,
        responses=_EVENT_RESPONSES,
    )
    async def job_events(
        job_id: JobId,
        last_event_id: Annotated[
            int | None,
            Header(ge=0, le=_MAX_SEQ, description="resume after this event (sent by EventSource)"),
        ] = None,
        after: Annotated[
            int | None,
            Query(ge=0, le=_MAX_SEQ, description="start after this event seq (when no header)"),
        ] = None,
    ) -> Response:
        """Every status change and progress report of the job: past ones first, then live.

        The stream ends after the terminal status. A client that reconnects with
        ``Last-Event-ID`` continues after that event; once it has seen everything of a finished
        job the answer is 204, which tells ``EventSource`` not to reconnect.
        """
        record = await find(job_id)
        start = last_event_id if last_event_id is not None else (after or 0)
        job = queue.job(record.id)
        if record.status.terminal and await job.finished(start):
            return Response(status_code=http.HTTP_204_NO_CONTENT)
        return EventStreamResponse(job_stream(job, start, heartbeat))

    @router.post(
        "/{job_id}/cancel", name="conveyor_cancel_job", summary="Cancel a job",
        responses={**_NOT_FOUND, **_CONFLICT, **_FORBIDDEN},
    )
    async def cancel_job(job_id: JobId, x_conveyor: _CsrfHeader = None) -> JobOut:
        """Cancel the job: a waiting job never runs; a running one is stopped by its worker.

        A running job shows ``cancel_requested`` until its worker has stopped it.
        Cancelling a cancelled job changes nothing; a finished job is a 409.
        """
        require_csrf_header(x_conveyor)
        # Read, check the queue, then act. This read-then-act cannot race: a job never changes
        # queue, so the queue seen here is the queue the cancel acts on. The cancel itself is
        # atomic in the backend, which decides from its own record and returns it as it left it.
        found = await find(job_id)
        record = await (await queue._backend()).cancel(found.id)
        if record is None:
            raise HTTPException(http.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
        if record.status not in _CANCELLABLE:
            raise HTTPException(
                http.HTTP_409_CONFLICT, f"job {record.id} already {record.status.value}: nothing to cancel"
            )
        return JobOut.of(record)

    @router.post(
        "/{job_id}/retry", name="conveyor_retry_job", summary="Retry a failed job",
        responses={**_NOT_FOUND, **_CONFLICT, **_FORBIDDEN},
    )
    async def retry_job(job_id: JobId, x_conveyor: _CsrfHeader = None) -> JobOut:
        """Put a failed, dead or cancelled job back in its queue; its attempts start over."""
        require_csrf_header(x_conveyor)
        # read-then-act on the queue is safe (a job never changes queue); the retry is atomic in
        # the backend, which leaves a job that is no longer failed, dead or cancelled as it is
        record = await find(job_id)
        if record.status not in _RETRYABLE:
            raise HTTPException(
                http.HTTP_409_CONFLICT,
                f"job {record.id} is {record.status.value}: only failed, dead or cancelled jobs "
                "can be retried",
            )
        retried = await (await queue._backend()).retry(record.id)
        if retried is None:  # deleted in between
            raise HTTPException(http.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
        return JobOut.of(retried)

    return router


def _metrics_route(router: APIRouter, queue: Queue) -> None:
    """``GET /metrics``: the Prometheus text of this process (of all, in multiprocess mode)."""
    try:
        from conveyor import prometheus
    except ImportError as exc:
        raise ConfigError(
            f"queue.router(metrics=True) needs prometheus_client: pip install 'conveyor[prometheus]' "
            f"({exc})"
        ) from None
    registry = next(
        (mw.registry for mw in queue.middleware if isinstance(mw, prometheus.PrometheusMiddleware)),
        None,
    )

    @router.get(
        "/metrics", name="conveyor_metrics", summary="Prometheus metrics",
        response_class=Response, responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}},
    )
    async def job_metrics() -> Response:
        """Counters, histograms and gauges of jobs in the Prometheus text format; the counts by
        status are read from the backend now."""
        await prometheus.refresh_stats(queue, registry=registry)
        return Response(prometheus.exposition(registry), media_type=prometheus.CONTENT_TYPE)


def _dashboard_headers(nonce: str) -> dict[str, str]:
    """Security headers for the dashboard: only its own nonce'd inline code runs."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
