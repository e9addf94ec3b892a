"""Compile a POSTed config in a forked child, so protobuf never loads in the long-running proxy.

The child decodes, validates and compiles (config_compiler) and pickles the Snapshot, or the reason it
was rejected, into a pipe, then exits without touching the parent's event loop. The parent reads the
pipe from its event loop, so serving traffic goes on meanwhile, and reaps the child.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from typing import NoReturn

from meshbox.proxy.snapshot import ConfigRejected, Snapshot, Workload

_REAP_POLL = 0.005


def _compile_and_exit(body: bytes | bytearray, workload: Workload, write_end: int) -> NoReturn:
    """The child's whole life: nothing here may run the parent's loop or flush its buffers."""
    status = 1
    try:
        from meshbox.proxy.config_compiler import compile_serialized

        result: tuple[str, object]
        try:
            result = ("ok", compile_serialized(bytes(body), workload))
        except ConfigRejected as exc:
            result = ("rejected", str(exc))
        with os.fdopen(write_end, "wb") as out:
            out.write(pickle.dumps(result))
        status = 0
    finally:
        os._exit(status)


async def _read_to_eof(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if done.done():
            return
        try:
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        except BlockingIOError:
            return
        except OSError as exc:
            done.set_exception(exc)
            return
        done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


async def _reap(pid: int) -> int:
    """The child's exit code, without blocking the loop (it exits right after closing the pipe)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(_REAP_POLL)


async def compile_in_child(body: bytes | bytearray, workload: Workload) -> Snapshot:
    """A serialized meshbox.api.v1.ProxyConfig → Snapshot (not yet adopted). ConfigRejected says why a
    config cannot be used: undecodable, invalid, or the compiling child failed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _compile_and_exit(body, workload, write_end)
    os.close(write_end)
    try:
        data = await _read_to_eof(read_end)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    status = await _reap(pid)
    if status != 0 or not data:
        raise ConfigRejected(f"config: the child compiling it failed (exit status {status})")
    kind, result = pickle.loads(data)
    if kind == "rejected":
        raise ConfigRejected(result)
    assert isinstance(result, Snapshot)
    return result
