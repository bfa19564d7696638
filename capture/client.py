"""How the responder asks an agent for a capture: in-process, or over the agent's HTTP API.

Both clients have the same surface, ``capture(CaptureRequest) -> CaptureResult`` and
``probes()``, so the responder does not care where the agent runs.
"""
from __future__ import annotations

import aiohttp

from capture.agent import CaptureAgent
from capture.schemas import MAX_CAPTURE_SECONDS, CaptureRequest, CaptureResult, ProbeInfo, RequestError


class AgentError(RuntimeError):
    """The agent could not run the capture (unreachable, busy, refused); says which."""


class LocalAgentClient:
    def __init__(self, agent: CaptureAgent):
        self.agent = agent

    async def start(self) -> None:
        await self.agent.start()

    async def close(self) -> None:
        await self.agent.stop()

    async def probes(self) -> list[ProbeInfo]:
        return self.agent.probes()

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        try:
            return await self.agent.capture(req)
        except RequestError:
            raise
        except Exception as e:
            raise AgentError(f"local agent: {e}") from e


class HttpAgentClient:
    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        pass

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"})
        return self._session

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def probes(self) -> list[ProbeInfo]:
        async with self._client().get(f"{self.base_url}/v1/probes") as resp:
            data = await resp.json()
            if resp.status != 200:
                raise AgentError(f"agent {self.base_url}: {resp.status} {data.get('error')}")
            return [ProbeInfo(**p) for p in data["probes"]]

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        timeout = aiohttp.ClientTimeout(total=req.duration_s + MAX_CAPTURE_SECONDS)
        try:
            async with self._client().post(f"{self.base_url}/v1/captures", json=req.to_dict(),
                                           timeout=timeout) as resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise AgentError(f"agent {self.base_url} unreachable: {e!r}") from e
        if resp.status == 400:
            raise RequestError(data.get("error", "bad request"))
        if resp.status != 200:
            raise AgentError(f"agent {self.base_url} answered {resp.status}: {data.get('error')}")
        return CaptureResult.from_dict(data)
