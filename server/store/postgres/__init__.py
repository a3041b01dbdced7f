"""The PostgreSQL backend: PostgresStore and PostgresBus, for replicas sharing a database.

store.py is the SessionStore; sql.py its statements; pool.py opens the pool (schema,
migrations); driver.py is the typed slice of asyncpg chatd uses; bus.py is the ReplyBus
over LISTEN/NOTIFY. Importing this package imports asyncpg.
"""

from server.store.postgres.bus import PostgresBus
from server.store.postgres.store import PostgresStore

__all__ = ["PostgresBus", "PostgresStore"]
