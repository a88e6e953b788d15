"""The checkpointer: SQLite in the data dir for the embedded default, Postgres when a URL is set (compose).

Both are LangGraph's own savers, so a thread's state survives the process and is shared by every process
of the deployment (API servers and workers); the same tests run against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver

from core.errors import ConfigurationError
from core.settings import Settings

SQLITE_FILE = "checkpoints.sqlite"


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver[str]]:
    url = settings.agents.checkpoint_url
    if url:
        async with _postgres(url) as saver:
            yield saver
        return
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = settings.data_dir / SQLITE_FILE
    async with AsyncExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Several processes share the file (API servers, workers): wait for a writer rather than fail at once.
            conn = await stack.enter_async_context(aiosqlite.connect(str(path), timeout=30))
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            await conn.execute("PRAGMA busy_timeout = 30000")
            # WAL with synchronous=NORMAL: a commit survives the process being killed (what a resume needs) and
            # skips the fsync per commit that FULL makes (~15 ms each on these disks); only an OS crash can
            # lose the last commits.
            await conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, aiosqlite.Error) as exc:
            raise ConfigurationError(f"cannot use the checkpoint database {path}: {exc}") from exc
        yield saver


@asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[BaseCheckpointSaver[str]]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import OperationalError
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    try:
        async with AsyncConnectionPool(url, kwargs=kwargs, max_size=16, open=False) as pool:
            await pool.open(wait=True, timeout=30)
            saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            await saver.setup()
            yield saver
    except OperationalError as exc:
        raise ConfigurationError(
            f"cannot use the checkpoint database at ORCHESTRION_AGENTS__CHECKPOINT_URL: {exc}"
        ) from exc
