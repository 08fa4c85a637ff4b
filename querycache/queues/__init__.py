"""Write-behind queues: durable journals, a batching worker, read-your-writes.

``cache.write_behind(engine, journal=...)`` returns a
:class:`~querycache.queues.writebehind.WriteBehind`; see
``docs/architecture.md``, "Write-behind".
"""

from querycache.queues.journal import DeadLetter, Journal
from querycache.queues.writebehind import FlushResult, QueueFull, WriteBehind

__all__ = ["DeadLetter", "FlushResult", "Journal", "QueueFull", "WriteBehind"]
