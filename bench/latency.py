"""Full deploys on a database some milliseconds away: where round trips, not Python, dominate.

The embedded server listens on a Unix socket, where a round trip costs ~0.1 ms. A network
database costs 1-50 ms per round trip. `DelayProxy` stands in for the network: a TCP listener on
127.0.0.1 that forwards to the server's socket and holds every chunk `rtt / 2` in each
direction, in order (so each request/response pair pays `rtt` once, as over a real link).

The suite runs, on fresh databases through the proxy and in rotated order: `db-deploy deploy`,
bare `alembic upgrade head` and `psql -f` (which also sends one statement per round trip). The
three must build the same catalog. What it shows is what the deployer's own statements (lock,
preflight, history, status, smoke) cost once each round trip costs milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from bench.deploy import FULL, fingerprint, prepare, settle, summarise, tool_command
from bench.proc import run
from bench.server import Server
from bench.stats import rotate


class DelayProxy:
    """127.0.0.1:`port` → the server's Unix socket, each chunk delayed `rtt / 2` each way."""

    def __init__(self, socket_path: Path, rtt_ms: float) -> None:
        self.socket_path = socket_path
        self.one_way = rtt_ms / 2000
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    dst.close()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + self.one_way, data))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        await sender


def server_socket(server: Server) -> Path:
    sockets = sorted(Path(server.host).glob(".s.PGSQL.*[0-9]"))
    if not sockets:
        raise RuntimeError(f"no PostgreSQL socket in {server.host}")
    return sockets[0]


def run_suite(
    server: Server, work: Path, size: int, rtt_ms: float, repeat: int, progress: Any
) -> dict[str, Any]:
    files = prepare(work, size, server)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    rounds: list[dict[str, Any]] = []
    made: list[str] = []
    with DelayProxy(server_socket(server), rtt_ms) as proxy:
        try:
            for k in range(repeat):
                dbs = {tool: server.create_database(f"l{size}") for tool in FULL}
                made += dbs.values()
                out: dict[str, Any] = {"order": rotate(list(FULL), k), "rss_kb": {}, "cpu_s": {}}
                for tool in out["order"]:
                    cmd, env = tool_command(tool, proxy.url(dbs[tool]), files, server.psql)
                    settle(server)
                    m = run(cmd, env=env, cwd=work, log=logs / f"latency-{tool}-{size}.log")
                    m.check(f"{tool} at {size} revisions, {rtt_ms} ms away")
                    out[tool], out["rss_kb"][tool], out["cpu_s"][tool] = (
                        m.seconds,
                        m.maxrss_kb,
                        m.cpu_s,
                    )
                prints = {tool: fingerprint(server, dbs[tool]) for tool in FULL}
                out["schemas_identical"] = len({p[1] for p in prints.values()}) == 1
                if not out["schemas_identical"]:
                    raise RuntimeError(f"resulting schemas differ {rtt_ms} ms away: {prints}")
                rounds.append(out)
                progress(
                    f"  {size} revisions {rtt_ms:g} ms away, round {k + 1}/{repeat}: "
                    + ", ".join(f"{t} {out[t]:.2f}s" for t in FULL)
                )
        finally:
            for db in made:
                server.drop_database(db)
    return {"size": size, "rtt_ms": rtt_ms, "rounds": rounds, **summarise(rounds)}
