"""The console / file chat sink: what runs when no Slack is configured.

Each operation prints the message's plain text under a one-line header naming the thread and the
operation, and, when a path is given, appends one JSON line per operation to that file, so a
script or a test can read the thread back. The sink makes up its own ``ts`` values (Unix time
with microseconds, strictly increasing) and uses the channel ``console``.
"""
from __future__ import annotations

import asyncio
import errno
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from responder.delivery.sinks.base import SinkPermanentError, SinkRetryableError, ThreadRef
from responder.render.thread import Message

CONSOLE_CHANNEL = "console"


class ConsoleSink:
    name = "console"

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._stream = stream if stream is not None else sys.stdout
        self._last_ts = 0.0
        self._lock = asyncio.Lock()  # keeps the printed and the file order the same

    async def post_root(self, channel: str | None, message: Message, key: str | None = None) -> ThreadRef:
        thread = ThreadRef(channel=CONSOLE_CHANNEL, ts=self._next_ts())
        await self._emit("root", thread, thread.ts, message, requested_channel=channel, key=key)
        return thread

    async def find_root(self, channel: str | None, key: str, since: float) -> ThreadRef | None:
        record = await self._find("root", key, since)
        return None if record is None else ThreadRef(channel=record["channel"], ts=record["ts"])

    async def find_reply(self, thread: ThreadRef, key: str, since: float) -> str | None:
        record = await self._find("reply", key, since)
        return None if record is None else record["ts"]

    async def _find(self, op: str, key: str, since: float) -> dict[str, Any] | None:
        """The last record of ``op`` written with ``key`` at or after ``since`` (the JSON lines
        file is the sink's memory; without one there is nothing to find)."""
        if self.path is None:
            raise SinkPermanentError("console sink: no file to look in")
        path = self.path

        def scan() -> dict[str, Any] | None:
            found = None
            try:
                with path.open(encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if key not in line:
                            continue
                        try:
                            record = json.loads(line)
                        except ValueError:  # a line torn by a crash mid-write
                            continue
                        if record.get("op") == op and record.get("key") == key and record.get("at", 0) >= since:
                            found = record
            except FileNotFoundError:
                return None
            return found

        try:
            return await asyncio.to_thread(scan)
        except OSError as e:
            raise SinkRetryableError(f"console sink: cannot read {self.path}: {e}") from e

    async def edit(self, thread: ThreadRef, message: Message, ts: str | None = None) -> None:
        await self._emit("update", thread, ts or thread.ts, message)

    async def reply(self, thread: ThreadRef, message: Message, key: str | None = None) -> str:
        ts = self._next_ts()
        await self._emit("reply", thread, ts, message, key=key)
        return ts

    async def upload_file(self, thread: ThreadRef, filename: str, content: bytes, title: str,
                          comment: str) -> str:
        """Writes the file beside the JSON lines file (when there is one) and prints where."""
        ts = self._next_ts()
        where = "(not kept: no path)"
        if self.path is not None:
            target = self.path.parent / "files" / f"{thread.ts}-{ts}-{Path(filename).name}"
            try:
                await asyncio.to_thread(_write, target, content)
            except OSError as e:
                raise SinkPermanentError(f"console sink: cannot write {target}: {e}") from e
            where = str(target)
        await self._emit("file", thread, ts, Message(text=f"{comment}\n[{title}: {where}, {len(content)} bytes]"))
        return where

    async def close(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing left to flush
            pass

    def _next_ts(self) -> str:
        # Strictly increasing even when two calls land in the same microsecond.
        self._last_ts = max(time.time(), self._last_ts + 1e-6)
        return f"{self._last_ts:.6f}"

    async def _emit(self, op: str, thread: ThreadRef, ts: str, message: Message,
                    requested_channel: str | None = None, key: str | None = None) -> None:
        record: dict[str, Any] = {"op": op, "channel": thread.channel, "thread_ts": thread.ts, "ts": ts,
                                  "at": time.time(), "message": message.to_dict()}
        if requested_channel is not None:
            record["requested_channel"] = requested_channel
        if key is not None:
            record["key"] = key
        line = json.dumps(record, ensure_ascii=False)
        async with self._lock:
            self._stream.write(f"--- thread {thread.channel}:{thread.ts} · {op} · ts {ts} ---\n{message.text}\n")
            self._stream.flush()
            if self.path is not None:
                try:
                    await asyncio.to_thread(self._append, line)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EAGAIN, errno.EINTR):
                        raise SinkRetryableError(f"console sink: cannot append to {self.path}: {e}") from e
                    raise SinkPermanentError(
                        f"console sink: cannot append to {self.path}: {e}; check the path and its permissions"
                    ) from e

    def _append(self, line: str) -> None:
        assert self.path is not None  # _emit appends only when there is a file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
