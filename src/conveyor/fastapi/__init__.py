"""conveyor with FastAPI (``pip install "conveyor[fastapi]"``); the only code that imports FastAPI.

```python
from fastapi import Depends, FastAPI
from conveyor import Queue

queue = Queue()
app = FastAPI(lifespan=queue.lifespan(worker=True, concurrency=10))
app.include_router(queue.router(dashboard=True, dependencies=[Depends(admin)]), prefix="/jobs")
```

* :class:`QueueLifespan` (``queue.lifespan()``): open the queue with the app, optionally run a
  worker in it, drain it on shutdown.
* ``Depends`` in tasks, resolved per attempt by FastAPI itself (:mod:`.dependencies`);
  ``ctx: JobContext`` gives a dependency the running job.
* ``queue.router()``: REST over the queue's jobs, Server-Sent Events per job, and an HTML
  dashboard; guard it with ``dependencies`` (it warns without them, unless ``public=True``).
"""

from conveyor.fastapi.dependencies import JobContext, job_context
from conveyor.fastapi.lifespan import QueueLifespan
from conveyor.fastapi.router import job_router
from conveyor.fastapi.schemas import JobEventOut, JobOut, JobPage, StatsOut

__all__ = [
    "JobContext",
    "JobEventOut",
    "JobOut",
    "JobPage",
    "QueueLifespan",
    "StatsOut",
    "job_context",
    "job_router",
]
