"""Welcome email: sent after ``POST /users``, retried with backoff, failures never swallowed.

With ``BackgroundTasks`` a mail server that is down means a lost email and, at best, a log line.
Here the email is a job:

* the endpoint stores the user and enqueues ``send_welcome(user_id)``: the id, never the
  request's database session (which closes with the request);
* the task declares the *same* ``get_db`` dependency as the endpoint and gets its own session,
  fresh for every attempt;
* when the mail server fails, the job is retried with exponential backoff
  (``Retry(attempts=4, backoff=0.5)``); every failure is stored with its traceback and shown on
  the dashboard (``/jobs/ui``); after the last attempt the job is ``dead`` and can be retried from
  the dashboard.

Run it::

    uvicorn welcome_email:app --app-dir examples
    curl -X POST 'localhost:8000/mail-server/outage?failures=3'    # the next 3 sends fail
    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'
    open http://localhost:8000/jobs/ui

Addresses at ``bounce.example`` are always rejected, so their jobs end ``dead``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from conveyor import Context, Queue, Retry

#: the app's own database (users); the jobs live in conveyor's store ($CONVEYOR_URL)
USERS_DB = os.environ.get("USERS_DB", "./welcome-users.db")

#: seconds spent rendering an email (the demo makes it visible)
RENDER_SECONDS = float(os.environ.get("RENDER_SECONDS", "0.2"))

queue = Queue()


def get_db() -> Iterator[sqlite3.Connection]:
    """A database session per request, or per job attempt: committed on success, always closed."""
    db = sqlite3.connect(USERS_DB, check_same_thread=False)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, "
            "name TEXT NOT NULL, welcomed_at TEXT)"
        )
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


class MailRejected(Exception):
    """The mail server refused the address for good (a 5xx reply)."""


class MailServer:
    """Stands in for an SMTP server: it can be down for a while, and it rejects some addresses."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.outbox: list[dict[str, str]] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        """Deliver one email, or raise like a real mail client would."""
        await asyncio.sleep(0.02)  # the network
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionRefusedError(f"mail server unreachable: connection refused (sending to {to})")
        if to.endswith("@bounce.example"):
            raise MailRejected(f"550 5.1.1 <{to}>: mailbox unavailable")
        self.outbox.append({"to": to, "subject": subject, "body": body})


mail_server = MailServer()


def get_mailer() -> MailServer:
    """The mail client, as a dependency (tests override it)."""
    return mail_server


@queue.task(retries=Retry(attempts=4, backoff=0.5, jitter=True), timeout=30)
async def send_welcome(
    ctx: Context,
    user_id: int,
    # the same dependencies as the endpoints; as defaults, so `send_welcome.enqueue(user_id)`
    # type-checks (with Annotated[..., Depends()] a type checker would ask for them)
    db: sqlite3.Connection = Depends(get_db),  # noqa: B008
    mailer: MailServer = Depends(get_mailer),  # noqa: B008
) -> str:
    """Send the welcome email of one user and record it. Retried when the mail server fails."""
    row = db.execute("SELECT email, name FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise LookupError(f"user {user_id} does not exist")
    email, name = str(row[0]), str(row[1])
    await ctx.progress(0.3, f"rendering the email to {email}")
    await asyncio.sleep(RENDER_SECONDS)  # a template, an image or two: real work goes here
    await ctx.progress(0.6, "handing it to the mail server")
    await mailer.send(email, f"Welcome, {name}!", f"Hi {name}, thanks for signing up.")
    await ctx.progress(1.0, "sent")
    db.execute("UPDATE users SET welcomed_at = ? WHERE id = ?", (datetime.now(UTC).isoformat(), user_id))
    return email


app = FastAPI(title="welcome email", lifespan=queue.lifespan(worker=True, concurrency=10))
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


class UserIn(BaseModel):
    """A sign-up."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", examples=["ada@example.com"])
    name: str = Field(min_length=1, max_length=100)


class UserOut(BaseModel):
    """A stored user and the job that welcomes them."""

    id: int
    email: str
    name: str
    welcome_job: str


@app.post("/users", status_code=201)
async def create_user(user: UserIn, db: Annotated[sqlite3.Connection, Depends(get_db)]) -> UserOut:
    """Store the user, then enqueue the welcome email (by id: the job gets its own session)."""
    try:
        cursor = db.execute("INSERT INTO users (email, name) VALUES (?, ?)", (user.email, user.name))
    except sqlite3.IntegrityError:
        raise HTTPException(409, f"{user.email} is already signed up") from None
    db.commit()  # the job may start at once: the user must be visible to its session
    user_id = cursor.lastrowid
    assert user_id is not None
    job = await send_welcome.enqueue(user_id)
    return UserOut(id=user_id, email=user.email, name=user.name, welcome_job=job.id)


@app.get("/users/{user_id}")
async def get_user(user_id: int, db: Annotated[sqlite3.Connection, Depends(get_db)]) -> dict[str, Any]:
    """A user, with when their welcome email went out (null until it has)."""
    row = db.execute("SELECT id, email, name, welcomed_at FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise HTTPException(404, f"no user {user_id}")
    return dict(zip(("id", "email", "name", "welcomed_at"), row, strict=True))


@app.post("/mail-server/outage")
async def outage(
    failures: Annotated[int, Query(ge=0, le=100)], mailer: Annotated[MailServer, Depends(get_mailer)]
) -> dict[str, int]:
    """Make the next ``failures`` sends fail, like a mail server that is down for a while."""
    mailer.failures_left = failures
    return {"failures_left": failures}


@app.get("/mail-server/outbox")
async def outbox(mailer: Annotated[MailServer, Depends(get_mailer)]) -> list[dict[str, str]]:
    """Every email delivered so far."""
    return mailer.outbox


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, timeout_graceful_shutdown=5)
