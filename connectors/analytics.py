"""The analytics store: the `AnalyticsSink` port and its one adapter over clickhouse-connect.

clickhouse-connect drives both a ClickHouse server (HTTP) and chDB, the ClickHouse engine
in-process (`get_client(dsn="chdb:///abs/path")`), so the embedded default and production share
one adapter, one SQL dialect and one set of migrations; the settings choose (`analytics.url`
set: the server; otherwise chDB on `analytics.dsn`).

chDB holds one engine per process and locks its path: a second process cannot open it while the
sink runs. `sluicegate sql` then goes through the sink's query endpoint
(`serving/analytics_sink.py`).

Vendor exceptions are translated here, once, into `AnalyticsError`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sluicegate.errors import AnalyticsError
from sluicegate.settings import AnalyticsSettings

DDL_DIR = Path(__file__).resolve().parent / "analytics_ddl"
MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


@runtime_checkable
class AnalyticsSink(Protocol):
    """A columnar SQL store the sink writes event rows to and `sluicegate sql` reads."""

    def migrate(self) -> list[str]:
        """Apply the DDL migrations not applied yet, in order; return the ones applied now."""
        ...

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows (all with the same keys). Idempotent per event_id for readers (FINAL)."""
        ...

    def query(self, sql: str, *, readonly: bool = False) -> QueryResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations(directory: Path = DDL_DIR) -> list[Migration]:
    """`NNNN_name.sql` files in version order; statements split on `;`, comment lines dropped."""
    migrations = []
    for path in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.strip().startswith("--")
        )
        statements = tuple(s.strip() for s in text.split(";") if s.strip())
        migrations.append(Migration(int(path.name[:4]), path.stem, statements))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise AnalyticsError(f"duplicate migration versions in {directory}", retriable=False)
    return migrations


def _translate(exc: Exception, what: str) -> AnalyticsError:
    from clickhouse_connect.driver.exceptions import InterfaceError, OperationalError

    retriable = isinstance(exc, OperationalError | InterfaceError | OSError)
    return AnalyticsError(f"{what}: {exc}", retriable=retriable)


def _locked_by_another_process(path: Path) -> bool:
    """ClickHouse holds an flock on `<path>/status` while an engine has the path open."""
    import fcntl

    try:
        with (path / "status").open("a") as status:
            try:
                fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(status, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


class ClickHouseAnalytics:
    """`AnalyticsSink` over clickhouse-connect: a ClickHouse server or chDB on a path.

    Calls are serialized by a lock: the sink loop and the query endpoint share one client (and
    chDB allows one engine per process).
    """

    def __init__(self, *, settings: AnalyticsSettings) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        self._lock = threading.RLock()
        self.target = settings.url or settings.dsn
        try:
            if settings.url:
                password = settings.password.get_secret_value() if settings.password else ""
                self._client = clickhouse_connect.get_client(
                    dsn=settings.url,
                    username=settings.username,
                    password=password,
                    database=settings.database,
                )
            else:
                settings.chdb_path.mkdir(parents=True, exist_ok=True)
                self._client = clickhouse_connect.get_client(dsn=settings.dsn)
        except (ClickHouseError, OSError) as exc:
            if not settings.url and _locked_by_another_process(settings.chdb_path):
                raise AnalyticsError(
                    f"cannot open {self.target}: the path is locked by another process (chDB "
                    "allows one engine per path; is `sluicegate sink` running?)",
                    retriable=True,
                ) from exc
            raise _translate(exc, f"cannot open {self.target}") from exc

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                yield
            except (ClickHouseError, OSError) as exc:
                raise _translate(exc, what) from exc

    def migrate(self) -> list[str]:
        with self._calling("migration"):
            self._client.command(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                " version UInt32, name String, applied_at DateTime64(3, 'UTC')"
                ") ENGINE = MergeTree ORDER BY version"
            )
            done = {
                int(row[0])
                for row in self._client.query(f"SELECT version FROM {MIGRATIONS_TABLE}").result_rows
            }
            applied = []
            for migration in load_migrations():
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    self._client.command(statement)
                self._client.insert(
                    MIGRATIONS_TABLE,
                    [[migration.version, migration.name, datetime.now(UTC)]],
                    column_names=["version", "name", "applied_at"],
                )
                applied.append(migration.name)
            return applied

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data = [[row[c] for c in columns] for row in rows]
        with self._calling(f"insert into {table}"):
            self._client.insert(table, data, column_names=columns)

    def query(self, sql: str, *, readonly: bool = False) -> QueryResult:
        settings = {"readonly": 1} if readonly else None
        with self._calling("query"):
            result = self._client.query(sql, settings=settings)
            return QueryResult(list(result.column_names), list(result.result_rows))

    def close(self) -> None:
        with self._lock:
            self._client.close()


def open_analytics(settings: AnalyticsSettings) -> ClickHouseAnalytics:
    """The configured store (server or chDB), migrated."""
    store = ClickHouseAnalytics(settings=settings)
    try:
        store.migrate()
    except AnalyticsError:
        store.close()
        raise
    return store
