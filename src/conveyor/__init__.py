"""conveyor: background jobs for FastAPI and asyncio apps.

```python
from conveyor import Queue, Context, Retry

queue = Queue()  # $CONVEYOR_URL, else sqlite:///./conveyor.db

@queue.task(retries=Retry(attempts=5, backoff=2.0))
async def send_email(to: str, subject: str) -> None: ...

job = await send_email.enqueue("a@example.com", subject="hi")
```
"""

from conveyor.context import Context
from conveyor.job import Job
from conveyor.model import JobRecord, JobStatus
from conveyor.queue import Queue
from conveyor.retry import Retry
from conveyor.settings import Settings
from conveyor.task import Task

__all__ = ["Context", "Job", "JobRecord", "JobStatus", "Queue", "Retry", "Settings", "Task"]
__version__ = "0.1.0"
