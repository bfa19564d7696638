"""The chat sink interface: one incident thread, posted, edited in place and replied to.

Every integration (Slack, the console / file sink) implements :class:`ChatSink`. A sink does one
attempt per call and reports failures as one of two exception types; the responder's outbox owns
retrying, so a sink never sleeps or retries on its own:

- :class:`SinkRetryableError`: try again later (rate limited, server error, timeout, connection
  refused). ``retry_after`` is the server's own hint in seconds when it gave one.
- :class:`SinkPermanentError`: retrying the same call cannot succeed (bad token, unknown channel,
  bot not in the channel, blocks rejected); fix the configuration or the message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from responder.render.thread import Message


@dataclass(frozen=True)
class ThreadRef:
    """Where an incident's thread lives: the channel id and the root message's ``ts``."""

    channel: str
    ts: str

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "ts": self.ts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThreadRef:
        return cls(channel=str(d["channel"]), ts=str(d["ts"]))


class SinkError(Exception):
    """A chat sink call failed; ``code`` is the platform's error name when it gave one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SinkRetryableError(SinkError):
    """The call may succeed later; wait at least ``retry_after`` seconds when it is set."""

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class SinkPermanentError(SinkError):
    """The call cannot succeed as is: the message says which setting or input to fix."""


@runtime_checkable
class ChatSink(Protocol):
    """A chat integration the responder reports incidents through."""

    name: str

    async def post_root(self, channel: str | None, message: Message, key: str | None = None) -> ThreadRef:
        """Post a thread's root message to ``channel`` (None: the sink's default channel).
        ``key`` (the outbox's incident/step) is kept with the message where the platform
        allows, so ``find_root`` can find it again."""
        ...

    async def find_root(self, channel: str | None, key: str, since: float) -> ThreadRef | None:
        """The root posted with ``key`` to ``channel`` at or after Unix time ``since``, if any
        (asked after a crash interrupted a post). SinkPermanentError when the sink cannot look."""
        ...

    async def edit(self, thread: ThreadRef, message: Message, ts: str | None = None) -> None:
        """Replace a message of ``thread`` in place: the reply ``ts``, or (None) the root."""
        ...

    async def reply(self, thread: ThreadRef, message: Message, key: str | None = None) -> str:
        """Post ``message`` in ``thread``; returns the reply's ``ts``. ``key`` as for post_root."""
        ...

    async def find_reply(self, thread: ThreadRef, key: str, since: float) -> str | None:
        """The ``ts`` of the reply posted with ``key`` in ``thread`` at or after ``since``, if any."""
        ...

    async def upload_file(self, thread: ThreadRef, filename: str, content: bytes, title: str,
                          comment: str) -> str:
        """Share a file (a chart) in ``thread`` with ``comment``; returns the file's id."""
        ...

    async def close(self) -> None:
        """Release connections and files; the sink is not used afterwards."""
        ...
