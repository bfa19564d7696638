"""A small local HTTP service standing in for an LLM app's request path in the demo and tests.

Each request does a few milliseconds of CPU work (prompt assembly, tokenisation) and answers
a JSON body, so CPU starvation and packet loss both show up in its latency.
"""
from __future__ import annotations

import argparse
import hashlib

from aiohttp import web

WORK_ROUNDS = 2000  # about 2-3 ms of hashing on this machine's kind


async def complete(request: web.Request) -> web.Response:
    h = b"prompt"
    for _ in range(request.app["work_rounds"]):
        h = hashlib.sha256(h).digest()
    return web.json_response({"choices": [{"text": h.hex()[:16]}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--work-rounds", type=int, default=WORK_ROUNDS,
                    help=f"hashing rounds per request (default {WORK_ROUNDS}; fewer for a high request rate)")
    args = ap.parse_args()
    app = web.Application()
    app["work_rounds"] = max(0, args.work_rounds)
    app.router.add_post("/v1/complete", complete)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
