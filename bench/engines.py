"""Engines waiting on long polls: what 1,000 of them cost idle, and how fast all of them get a change.

Each engine is one keep-alive connection holding `GET …/model/SYMBOL` with `If-None-Match` (the ETag
it has) and `Prefer: wait=30` (SPEC §8). The client is one asyncio process with raw sockets, so the
client itself is cheap next to the server. With every poll parked, the server's CPU time over 3 s is
the idle cost; then the group is retrained (a new model file, `POST …/refresh`) and every poll must
come back 200 with the new ETag.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench import desk, tools, workload
from bench.tools import BenchError, Client, Server, bootstrap

IDLE_SECONDS = 3.0
WAIT_SECONDS = 30


def _request(path: str, token: str, etag: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Accept-Encoding: gzip\r\nIf-None-Match: {etag}\r\nPrefer: wait={WAIT_SECONDS}\r\n\r\n").encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, str | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("etag")


async def _engines(port: int, request: bytes, count: int, connected: asyncio.Event,
                   answered: list[tuple[float, int, str | None]]) -> None:
    streams = []
    for start in range(0, count, 100):  # in batches, so the listen backlog never overflows
        batch = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(start, min(count, start + 100))))
        streams.extend(batch)
    for _reader, writer in streams:
        writer.write(request)
    await asyncio.gather(*(w.drain() for _r, w in streams))
    connected.set()

    async def one(reader: asyncio.StreamReader) -> None:
        status, etag = await _read_response(reader)
        answered.append((time.perf_counter(), status, etag))

    try:
        await asyncio.gather(*(one(r) for r, _w in streams))
    finally:
        for _r, w in streams:
            w.close()


async def _scenario(server: Server, client: Client, token: str, model: str, directory: Path, index: int,
                    count: int, new_model: bytes) -> dict:
    path = f"/api/models/{model}/model/{workload.symbol_of(index)}"
    status, headers, _ = client.request("GET", path, headers={"Accept-Encoding": "gzip"})
    if status != 200:
        raise BenchError(f"GET {path} answered {status}")
    old = headers["etag"]
    connected, answered = asyncio.Event(), []
    task = asyncio.create_task(_engines(server.port, _request(path, token, old), count, connected, answered))
    await asyncio.wait_for(connected.wait(), 60)
    await asyncio.sleep(0.5)  # every request has reached the server and parked
    if answered:
        raise BenchError(f"{len(answered)} long polls came back before any change (status {answered[0][1]})")
    cpu_before = server.cpu()
    await asyncio.sleep(IDLE_SECONDS)
    idle_cpu = server.cpu() - cpu_before
    early = len(answered)

    def retrain() -> tuple[float, float]:
        workload.replace_model_atomically(directory, index, new_model)
        sent = time.perf_counter()
        client.json("POST", f"/api/models/{model}/refresh", {})
        return sent, time.perf_counter()

    sent, refreshed = await asyncio.get_running_loop().run_in_executor(None, retrain)
    await asyncio.wait_for(task, WAIT_SECONDS + 30)
    late = [a for a in answered if a[0] >= sent]
    fresh = [a for a in late if a[1] == 200 and a[2] != old]
    if early or len(fresh) != count:
        statuses = sorted({a[1] for a in answered})
        raise BenchError(f"long polls: {early} answered while idle, {len(fresh)}/{count} got the new payload "
                         f"(statuses {statuses})")
    first, last = min(a[0] for a in fresh), max(a[0] for a in fresh)
    return {"polls": count, "idle_seconds": IDLE_SECONDS, "idle_cpu_seconds": round(idle_cpu, 3),
            "all_received_after_refresh_sent_s": round(last - sent, 3),
            "first_to_last_s": round(last - first, 3), "refresh_request_s": round(refreshed - sent, 3)}


def measure_long_polls(server: Server, client: Client, token: str, model: str, directory: Path, index: int,
                       count: int, new_model: bytes) -> dict:
    """Park `count` long polls on one symbol of a registered model, measure the server's idle CPU,
    retrain that symbol's group and time until every poll has received the new payload."""
    return asyncio.run(_scenario(server, client, token, model, directory, index, count, new_model))


def measure_engines(work: Path, run_dir: Path, logs: Path, polls: int) -> dict:
    """`polls` long polls parked on one symbol of a small model, then a retrain of its group."""
    directory = workload.subset_directory(desk.build_small_directory(work, 10), run_dir / "engines", 10)
    tools.raise_open_files(polls * 2 + 1024)  # the client's sockets; the server inherits it too
    _log(f"long polls: {polls} engines waiting on one symbol, {IDLE_SECONDS:g} s idle, then a retrain")
    with Server(run_dir / "data-engines", logs / "serve-engines.log") as server:
        server.start()
        token = bootstrap(server)
        client = Client(server.port, token)
        client.json("POST", "/api/models", {"name": "engines", "path": str(directory)}, expect=(201,))
        result = measure_long_polls(server, client, token, "engines", directory, 3, polls,
                                    desk.small_variant(work, "engines-retrain"))
        client.close()
    _log(f"  idle: {result['idle_cpu_seconds']:.3f} CPU-s over {result['idle_seconds']:g} s; all {polls} got the "
         f"change {result['all_received_after_refresh_sent_s']:.3f} s after the refresh was sent")
    return result


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)
