"""The fuzz suite's servers: a real responder (with Slack configured against the stand-in) and a
real capture agent, each served over loopback from a background thread with its own event loop,
so that hypothesis and schemathesis can drive them with plain synchronous HTTP. Every record the
servers log at ERROR, or with a traceback, is collected: a client's mistake must never make one.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from common import http as http_server
from common.net import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-token"
AGENT_TOKEN = "fuzz-agent-token"




class Trouble(logging.Handler):
    """Keeps every ERROR record and every record carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def texts(self) -> list[str]:
        return [self.format(r) for r in self.records]


class Served:
    """An aiohttp app (built by ``make_app`` inside the loop) on a free port, in a thread."""

    def __init__(self, make_app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._make_app = make_app
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the server did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def up():
            self.extra = await self._make_app()
            self.runner = await http_server.serve(self.extra["app"], "127.0.0.1", self.port, handle_signals=False)

        self.loop.run_until_complete(up())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def down():
            await self.runner.cleanup()
            for closer in self.extra.get("closers", []):
                await closer()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="session")
def trouble():
    handler = Trouble()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="session")
def responder(tmp_path_factory, trouble):
    from responder import config
    from responder.app import Responder
    from tests.standins.slack import DEFAULT_TOKEN, SIGNING_SECRET, SlackStandin

    data = tmp_path_factory.mktemp("fuzz-responder")

    async def make():
        slack = SlackStandin()
        api = await slack.start()
        settings = config.load(env={}, data_dir=data, webhook_token=TOKEN, playbooks_dir=REPO / "playbooks",
                               agent_url=f"http://127.0.0.1:{free_port()}", agent_token="x",
                               slack_bot_token=DEFAULT_TOKEN, slack_signing_secret=SIGNING_SECRET,
                               slack_api_url=api, max_body_bytes=256 * 1024)
        r = Responder.build(settings)
        return {"app": r.app(), "responder": r, "closers": [slack.stop]}

    served = Served(make)
    served.db = data / "incidents.sqlite3"
    served.secret = SIGNING_SECRET
    yield served
    served.stop()


@pytest.fixture(scope="session")
def agent(trouble):
    from capture.agent import CaptureAgent
    from capture.api import make_app

    async def make():
        # No capture slot: a request that passes validation is answered 429 before any probe loads,
        # so the suite walks every validation path in seconds.
        a = CaptureAgent(recorder=False, preload=False, max_concurrent=0)
        return {"app": make_app(a, AGENT_TOKEN)}

    served = Served(make)
    yield served
    served.stop()


def stored(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("notifications", "incidents", "alert_events", "jobs")}  # what intake alone writes
    finally:
        conn.close()
