"""A local stand-in for the Kubernetes API server: real HTTP on loopback, the documented REST
paths and object shapes for the reads the toolkit makes, bearer-token authentication.

- Lists: v1 PodList (``fieldSelector=spec.nodeName=``), v1 ServiceList, apps/v1 ReplicaSetList,
  batch/v1 JobList,
  discovery.k8s.io/v1 EndpointSliceList (derived from the Services' selectors); reads of one
  ReplicaSet or Job.
- Watches (``?watch=true&resourceVersion=N&timeoutSeconds=T``) for pods, services,
  replicasets and jobs: a chunked stream of one JSON event per line (``{"type": "ADDED" | "MODIFIED" |
  "DELETED" | "BOOKMARK" | "ERROR", "object": ...}``), replaying the changes after N and then
  streaming new ones until the timeout. A watch from a version older than the kept history gets
  the ``ERROR`` event with a 410 Status, as a real API server answers after compaction.
- Every object carries ``metadata.resourceVersion`` from one counter; tests change objects with
  ``upsert`` and ``delete`` and every open watch sees it.
"""
from __future__ import annotations

import asyncio
import copy
import json

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "kube-standin-token"

_LISTS = {"pods": ("v1", "PodList"), "services": ("v1", "ServiceList"), "replicasets": ("apps/v1", "ReplicaSetList"),
          "jobs": ("batch/v1", "JobList")}


def pod(uid: str, name: str, namespace: str, node: str, *, ip: str, labels: dict | None = None,
        owner: tuple[str, str] | None = None, containers: dict[str, str] | None = None,
        phase: str = "Running", ready: bool = True, ports: dict[str, int] | None = None) -> dict:
    """A v1 Pod; ``containers``: container name -> runtime-prefixed id (containerd://...);
    ``ports``: named container ports of its first container."""
    meta = {"uid": uid, "name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": f"owner-{owner[1]}", "controller": True}]
    specs: list[dict[str, object]] = [{"name": n, "image": "img"} for n in (containers or {"main": ""})]
    if ports:
        specs[0]["ports"] = [{"name": k, "containerPort": v, "protocol": "TCP"} for k, v in ports.items()]
    running = phase == "Running"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": specs},
            "status": {"phase": phase, "podIP": ip if running else None,
                       "conditions": [{"type": "Ready", "status": "True" if ready and running else "False"}],
                       "containerStatuses": [{"name": n, "containerID": cid, "ready": ready, "restartCount": 0,
                                              "image": "img", "imageID": "img",
                                              "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}}
                                              if running else {"waiting": {"reason": "ContainerCreating"}}}
                                             for n, cid in (containers or {}).items() if cid]}}


def service(name: str, namespace: str, cluster_ip: str, port: int, selector: dict | None = None,
            target_port: int | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace,
                                                                "uid": f"svc-{namespace}-{name}"},
            "spec": {"clusterIP": cluster_ip, "selector": selector,
                     "ports": [{"port": port, "targetPort": target_port or port, "protocol": "TCP"}]}}


def job(name: str, namespace: str, cron_job: str | None = None) -> dict:
    """A batch/v1 Job, started by ``cron_job`` when given."""
    meta: dict = {"name": name, "namespace": namespace, "uid": f"job-{namespace}-{name}"}
    if cron_job:
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cron_job,
                                    "uid": f"uid-{cron_job}", "controller": True}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": {}}}


def replica_set(name: str, namespace: str, deployment: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": namespace, "uid": f"rs-{namespace}-{name}",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                              "uid": f"uid-{deployment}", "controller": True}]},
            "spec": {"selector": {"matchLabels": {"app": deployment}}}}


class KubeStandin:
    # Changes kept for watches to replay; older versions get 410 Gone.
    HISTORY = 1000

    def __init__(self, pods: list[dict], services: list[dict], owners: dict[tuple[str, str, str], dict]):
        self.owners = owners  # (ns, kind, name) -> object, for reads of one ReplicaSet or Job
        self.version = 0
        self.objects: dict[str, dict[str, dict]] = {"pods": {}, "services": {}, "replicasets": {}, "jobs": {}}
        self.history: list[tuple[int, str, str, dict]] = []  # (version, resource, type, object)
        self.oldest = 0  # the first version a watch may resume from
        self.requests: list[str] = []
        self.down = False
        self._generation = 0  # bumped by drop_watches: open watches end
        self._changed = asyncio.Event()
        self._server: TestServer | None = None
        for p in pods:
            self.upsert("pods", p)
        for s in services:
            self.upsert("services", s)
        for (_, kind, _), obj in owners.items():
            self.upsert({"ReplicaSet": "replicasets", "Job": "jobs"}[kind], obj)
        self.oldest = self.version

    # --- changes -----------------------------------------------------------------------------
    @staticmethod
    def _key(obj: dict) -> str:
        return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"

    def upsert(self, resource: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        kind = "MODIFIED" if self._key(obj) in self.objects[resource] else "ADDED"
        self.objects[resource][self._key(obj)] = obj
        self._record(resource, kind, obj)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource].pop(f"{namespace}/{name}")
        self.version += 1
        obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self.version)))
        self._record(resource, "DELETED", obj)

    def _record(self, resource: str, kind: str, obj: dict) -> None:
        self.history.append((self.version, resource, kind, obj))
        if len(self.history) > self.HISTORY:
            self.compact()
        self._changed.set()
        self._changed = asyncio.Event()

    def compact(self) -> None:
        """Forget the change history, as etcd compaction does: older watches get 410."""
        self.history.clear()
        self.oldest = self.version

    def drop_watches(self) -> None:
        """End every open watch (as an API server restart or a load balancer does)."""
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def pods(self) -> list[dict]:
        return list(self.objects["pods"].values())

    @property
    def services(self) -> list[dict]:
        return list(self.objects["services"].values())

    def count(self, path: str, watch: bool) -> int:
        """How many requests (lists, or watches) were made for an API path."""
        return sum(1 for r in self.requests if r.split("?")[0] == path and ("watch=true" in r) == watch)

    # --- HTTP --------------------------------------------------------------------------------
    def _auth(self, request: web.Request) -> web.Response | None:
        self.requests.append(request.path_qs)
        if self.down:
            return web.json_response({"kind": "Status", "status": "Failure", "code": 503,
                                      "message": "unavailable"}, status=503)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "Unauthorized", "code": 401}, status=401)
        return None

    def _list_handler(self, resource: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            if (denied := self._auth(request)) is not None:
                return denied
            if request.query.get("watch") in ("true", "True", "1"):
                return await self._watch(request, resource)
            items = list(self.objects[resource].values())
            sel = request.query.get("fieldSelector", "")
            if sel.startswith("spec.nodeName="):
                node = sel.split("=", 1)[1]
                items = [p for p in items if p["spec"]["nodeName"] == node]
            api, kind = _LISTS[resource]
            return web.json_response({"apiVersion": api, "kind": kind,
                                      "metadata": {"resourceVersion": str(self.version)}, "items": items})
        return handler

    async def _watch(self, request: web.Request, resource: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        async def send(kind: str, obj: dict) -> None:
            await resp.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())

        if since < self.oldest:
            await send("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                                 "code": 410, "message": f"too old resource version: {since} ({self.oldest})"})
            return resp
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        generation = self._generation
        while not self.down and generation == self._generation:
            for version, res, kind, obj in list(self.history):
                if version > since and res == resource:
                    await send(kind, obj)
            since = self.version
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
        return resp

    async def list_slices(self, request: web.Request) -> web.Response:
        """One EndpointSlice per Service with a selector: the ready pods it selects."""
        if (denied := self._auth(request)) is not None:
            return denied
        items = []
        for svc in self.services:
            sel = svc["spec"].get("selector")
            if not sel:
                continue
            ns = svc["metadata"]["namespace"]
            eps = [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                    "nodeName": p["spec"]["nodeName"]}
                   for p in self.pods if p["metadata"]["namespace"] == ns and p["status"].get("podIP")
                   and all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": f"{svc['metadata']['name']}-abc12", "namespace": ns,
                                       "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
                          "endpoints": eps,
                          "ports": [{"port": p["targetPort"], "protocol": "TCP"} for p in svc["spec"]["ports"]]})
        return web.json_response({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def read_owner(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        kind = {"replicasets": "ReplicaSet", "jobs": "Job"}[request.match_info["plural"]]
        obj = self.owners.get((request.match_info["ns"], kind, request.match_info["name"]))
        if obj is None:
            return web.json_response({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404},
                                     status=404)
        return web.json_response(obj)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._list_handler("pods"))
        app.router.add_get("/api/v1/services", self._list_handler("services"))
        app.router.add_get("/apis/apps/v1/replicasets", self._list_handler("replicasets"))
        app.router.add_get("/apis/batch/v1/jobs", self._list_handler("jobs"))
        app.router.add_get("/apis/discovery.k8s.io/v1/endpointslices", self.list_slices)
        app.router.add_get("/apis/{group:apps|batch}/v1/namespaces/{ns}/{plural:replicasets|jobs}/{name}",
                           self.read_owner)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return str(self._server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        self.down = True  # ends the open watches
        self._changed.set()
        if self._server:
            await self._server.close()
