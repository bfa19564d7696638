"""The agent's one line at start when bcc cannot find the running kernel's headers."""
from __future__ import annotations

import pytest

from capture.kernelsrc import missing_headers

REL = "6.1.0-test-amd64"


def test_headers_under_lib_modules_or_built_into_the_kernel_are_enough(tmp_path):
    (tmp_path / "modules" / REL / "build" / "include" / "linux").mkdir(parents=True)
    assert missing_headers(REL, tmp_path / "modules", tmp_path / "none", tmp_path / "none") is None
    (tmp_path / "kheaders.tar.xz").write_bytes(b"")
    assert missing_headers(REL, tmp_path / "empty", tmp_path / "kheaders.tar.xz", tmp_path / "none") is None


def test_a_dangling_link_into_an_unmounted_usr_src_is_named_with_what_to_mount(tmp_path):
    (tmp_path / "modules" / REL).mkdir(parents=True)
    (tmp_path / "modules" / REL / "build").symlink_to(f"/usr/src/linux-headers-{REL}-absent")
    line = missing_headers(REL, tmp_path / "modules", tmp_path / "none", tmp_path / "btf")
    assert line is not None and "\n" not in line
    assert f"no kernel headers for {REL}" in line
    assert f"a link to /usr/src/linux-headers-{REL}-absent, which is not here" in line
    assert "Mount the node's /lib/modules and /usr/src read-only" in line
    assert "no BTF at" in line
    (tmp_path / "btf").write_bytes(b"")
    assert "BTF" not in missing_headers(REL, tmp_path / "modules", tmp_path / "none", tmp_path / "btf")


@pytest.mark.kernel
def test_this_machine_has_them():
    assert missing_headers() is None  # set-up links them (scripts/setup.sh)
