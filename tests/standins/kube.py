"""A local stand-in for the Kubernetes API server: real HTTP on loopback, the documented REST
paths and object shapes (v1 PodList / ServiceList, discovery.k8s.io/v1 EndpointSliceList,
apps/v1 ReplicaSet, batch/v1 Job) for the
reads the toolkit makes, bearer-token authentication, and fieldSelector=spec.nodeName."""
from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "kube-standin-token"


def pod(uid: str, name: str, namespace: str, node: str, *, ip: str, labels: dict | None = None,
        owner: tuple[str, str] | None = None, containers: dict[str, str] | None = None) -> dict:
    """A v1 Pod; ``containers``: container name -> runtime-prefixed id (containerd://...)."""
    meta = {"uid": uid, "name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": f"owner-{owner[1]}", "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": n} for n in (containers or {})]},
            "status": {"phase": "Running", "podIP": ip,
                       "containerStatuses": [{"name": n, "containerID": cid, "ready": True, "restartCount": 0,
                                              "image": "img", "imageID": "img"}
                                             for n, cid in (containers or {}).items()]}}


def service(name: str, namespace: str, cluster_ip: str, port: int, selector: dict | None = None,
            target_port: int | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "selector": selector,
                     "ports": [{"port": port, "targetPort": target_port or port, "protocol": "TCP"}]}}


class KubeStandin:
    def __init__(self, pods: list[dict], services: list[dict], owners: dict[tuple[str, str, str], dict]):
        self.pods, self.services, self.owners = pods, services, owners  # owners: (ns, kind, name) -> object
        self.requests: list[str] = []
        self.down = False
        self._server: TestServer | None = None

    def _auth(self, request: web.Request) -> web.Response | None:
        self.requests.append(request.path_qs)
        if self.down:
            return web.json_response({"kind": "Status", "status": "Failure", "code": 503,
                                      "message": "unavailable"}, status=503)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "Unauthorized", "code": 401}, status=401)
        return None

    async def list_pods(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        items = self.pods
        sel = request.query.get("fieldSelector", "")
        if sel.startswith("spec.nodeName="):
            node = sel.split("=", 1)[1]
            items = [p for p in items if p["spec"]["nodeName"] == node]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                                  "items": items})

    async def list_services(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return web.json_response({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "1"},
                                  "items": self.services})

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
                   for p in self.pods if p["metadata"]["namespace"] == ns
                   and all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": f"{svc['metadata']['name']}-abc12", "namespace": ns,
                                       "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
                          "endpoints": eps,
                          "ports": [{"port": p["targetPort"], "protocol": "TCP"} for p in svc["spec"]["ports"]]})
        return web.json_response({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                  "metadata": {"resourceVersion": "1"}, "items": items})

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
        app.router.add_get("/api/v1/pods", self.list_pods)
        app.router.add_get("/api/v1/services", self.list_services)
        app.router.add_get("/apis/discovery.k8s.io/v1/endpointslices", self.list_slices)
        app.router.add_get("/apis/{group:apps|batch}/v1/namespaces/{ns}/{plural:replicasets|jobs}/{name}",
                           self.read_owner)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return str(self._server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        if self._server:
            await self._server.close()


def replica_set(name: str, namespace: str, deployment: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": namespace,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                              "uid": f"uid-{deployment}", "controller": True}]},
            "spec": {"selector": {"matchLabels": {"app": deployment}}}}
