"""How the responder asks an agent for a capture: in-process, or over the agent's HTTP API.

Both clients have the same surface, ``capture(CaptureRequest) -> CaptureResult`` and
``probes()``, so the responder does not care where the agent runs.
"""
from __future__ import annotations

import aiohttp

from capture.agent import CaptureAgent
from capture.schemas import MAX_CAPTURE_SECONDS, CaptureRequest, CaptureResult, ProbeInfo, RequestError


class AgentError(RuntimeError):
    """The agent could not run the capture (unreachable, busy, refused). ``str()`` is a sentence
    fit for a chat thread (no URL, address or exception repr); ``detail`` is for the log."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


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
            raise AgentError(f"the capture agent failed ({type(e).__name__})", f"local agent: {e!r}") from e


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
                raise AgentError(f"the capture agent answered HTTP {resp.status}",
                                 f"agent {self.base_url}: {resp.status} {data.get('error')}")
            return [ProbeInfo(**p) for p in data["probes"]]

    async def capture(self, req: CaptureRequest) -> CaptureResult:
        timeout = aiohttp.ClientTimeout(total=req.duration_s + MAX_CAPTURE_SECONDS)
        try:
            async with self._client().post(f"{self.base_url}/v1/captures", json=req.to_dict(),
                                           timeout=timeout) as resp:
                data = await resp.json(content_type=None)
        except TimeoutError as e:
            raise AgentError("the capture agent did not answer in time", f"agent {self.base_url}: {e!r}") from e
        except aiohttp.ContentTypeError as e:
            raise AgentError("the capture agent's answer was not JSON", f"agent {self.base_url}: {e!r}") from e
        except aiohttp.ClientError as e:
            raise AgentError("the capture agent could not be reached", f"agent {self.base_url}: {e!r}") from e
        if resp.status == 400:
            raise RequestError(str(data.get("error", "bad request"))[:500])
        if resp.status == 429:
            raise AgentError("the capture agent was busy with other captures (429)",
                             f"agent {self.base_url}: 429 {data.get('error')}")
        if resp.status != 200:
            said = str(data.get("error") or "")[:200] if isinstance(data, dict) else ""
            raise AgentError(f"the capture agent answered HTTP {resp.status}" + (f": {said}" if said else ""),
                             f"agent {self.base_url} answered {resp.status}: {data.get('error')}")
        return CaptureResult.from_dict(data)
