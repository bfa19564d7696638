"""What a cgroup path says about its container, for the runtimes' own names outside Kubernetes
(the real podman tree is checked in tests/containers), and short container ids in a target."""
from __future__ import annotations

import pytest

from capture.identity import parse_cgroup_path
from capture.schemas import CaptureTarget, RequestError

CID = "89abcdef01234567" * 4


@pytest.mark.parametrize("path, runtime", [
    (f"/libpod_parent/libpod-{CID}", "podman"),           # podman, cgroupfs manager
    (f"/machine.slice/libpod-{CID}.scope", "podman"),     # podman, systemd manager
    (f"/docker/{CID}", "docker"),                          # docker, cgroupfs driver
    (f"/system.slice/docker-{CID}.scope", "docker"),      # docker, systemd driver
])
def test_a_runtime_container_outside_kubernetes_is_named_by_its_id(path, runtime):
    ident = parse_cgroup_path(path, 7)
    assert (ident.container_id, ident.runtime, ident.pod_uid, ident.driver) == (CID, runtime, None, None)


@pytest.mark.parametrize("path", [
    f"/libpod_parent/libpod-conmon-{CID}",      # podman's container monitor, not the container
    f"/machine.slice/libpod-conmon-{CID}.scope",
    f"/system.slice/{CID}",                      # a bare id under anything but docker
    "/libpod_parent",
])
def test_a_runtime_monitor_or_a_stray_id_is_no_container(path):
    assert parse_cgroup_path(path, 7).container_id is None


def test_a_target_takes_a_container_id_with_or_without_a_prefix_or_shortened_to_twelve_digits():
    t = CaptureTarget.from_dict({"containers": [CID, f"podman://{CID}", CID[:12]]})
    assert t.containers == [CID, CID, CID[:12]]
    for bad in (CID[:11], CID + "0", "libpod-" + CID, CID.upper()):
        with pytest.raises(RequestError, match="not a container id"):
            CaptureTarget.from_dict({"containers": [bad]})
