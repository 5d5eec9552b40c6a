"""Transactional sign-up: the user and their welcome email commit together, or not at all.

An app on PostgreSQL usually writes its row, commits, and then enqueues: if the enqueue fails
the email is lost; enqueue first and a failed commit leaves a job about a user who does not
exist. With conveyor's jobs in the same database, ``send_welcome.options(connection=session)``
writes the job inside the request's own SQLAlchemy transaction:

* the job exists if and only if the transaction commits (a taken email address rolls it back,
  and the job with it);
* workers see it, and are woken for it (``NOTIFY`` is delivered at commit), only after the
  commit, so the task always finds its user.

Run it (PostgreSQL on localhost; conveyor's tables go in their own schema)::

    DATABASE_URL=postgresql://postgres@127.0.0.1/postgres \\
        uvicorn transactional_signup:app --app-dir examples
    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'    # 201, and one welcome job
    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'    # 409, and no job
    open http://localhost:8000/jobs/ui
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor import Queue

#: the app's database; conveyor's jobs live in it too, in the schema ``conveyor``
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

engine = create_async_engine(DATABASE_URL.replace("postgresql://", "postgresql+asyncpg://", 1))
Session = async_sessionmaker(engine, expire_on_commit=False)
queue = Queue(os.environ.get("CONVEYOR_URL", f"{DATABASE_URL}?schema=conveyor"))


class Base(DeclarativeBase):
    """The app's tables."""


class User(Base):
    """A signed-up user; ``welcomed_at`` is set by the welcome job."""

    __tablename__ = "signup_users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    welcomed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


async def get_session() -> AsyncIterator[AsyncSession]:
    """A SQLAlchemy session per request, or per job attempt."""
    async with Session() as session:
        yield session


@queue.task(retries=3)
async def send_welcome(
    user_id: str,
    session: AsyncSession = Depends(get_session),  # noqa: B008 (a default: enqueue type-checks)
) -> str:
    """Send the welcome email of one user (here: record that it went out)."""
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:  # never happens: the job commits with its user
            raise LookupError(f"user {user_id} does not exist")
        user.welcomed_at = datetime.now(UTC)
        return user.email


@contextlib.asynccontextmanager
async def create_tables(_app: Any) -> AsyncIterator[None]:
    """The app's own tables (conveyor creates its schema by itself)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(
    title="transactional sign-up",
    lifespan=queue.lifespan(worker=True, concurrency=10, lifespan=create_tables),
)
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


class UserIn(BaseModel):
    """A sign-up."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", examples=["ada@example.com"])
    name: str = Field(min_length=1, max_length=100)


class UserOut(BaseModel):
    """A stored user and the job that welcomes them."""

    id: str
    email: str
    name: str
    welcome_job: str


@app.post("/users", status_code=201)
async def create_user(user: UserIn, session: Annotated[AsyncSession, Depends(get_session)]) -> UserOut:
    """Store the user and enqueue the welcome email in one transaction."""
    user_id = str(uuid.uuid4())
    try:
        async with session.begin():  # commits at the end of the block, or rolls back
            # inside one transaction the order does not matter: both commit, or neither does.
            # The job goes first here so that a taken email (the INSERT below fails) takes a
            # job that was already written back out with it.
            job = await send_welcome.options(connection=session).enqueue(user_id)
            session.add(User(id=user_id, email=user.email, name=user.name))
            await session.flush()
    except IntegrityError:
        raise HTTPException(409, f"{user.email} is already signed up") from None
    return UserOut(id=user_id, email=user.email, name=user.name, welcome_job=job.id)


@app.get("/users")
async def list_users(session: Annotated[AsyncSession, Depends(get_session)]) -> list[dict[str, Any]]:
    """Every user, with when their welcome email went out (null until it has)."""
    rows = (await session.scalars(select(User).order_by(User.email))).all()
    return [
        {"id": u.id, "email": u.email, "name": u.name, "welcomed_at": u.welcomed_at} for u in rows
    ]


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, timeout_graceful_shutdown=5)
