"""The SQLite backend: SqliteStore on one database file, for a single chatd process.

store.py is the SessionStore; sql.py its statements; writer.py the thread that owns the
writing connection; connect.py opens a connection (pragmas, migrations); owner.py, files.py
and wal.py check the file, its owner lock and its WAL before SQLite opens them.
"""

from server.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
