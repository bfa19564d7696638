"""Test tiers that follow from what a test uses: a test that takes the PostgreSQL fixtures is
``needs_postgres``, one that takes a tmpfs fixture ``needs_root``, and every test under
tests/deploy renders the manifests with ``kubectl kustomize``, without each having to say so.
The other tiers are marked where the test is written (``pytestmark`` or a decorator);
docs/testing.md lists them and the make targets."""
from __future__ import annotations

import pytest

# fixture name -> the marker every test that uses it gets
FIXTURE_TIERS = {
    "pg_server": "needs_postgres",
    "pg_url": "needs_postgres",
    "read_only_dir": "needs_root",  # a tmpfs mount
}
# folder (relative to the repository) -> the marker of every test in it
FOLDER_TIERS = {
    "tests/deploy": "needs_kubectl",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        wanted = {FIXTURE_TIERS[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_TIERS}
        folder = item.path.parent.relative_to(root).as_posix()
        wanted |= {m for f, m in FOLDER_TIERS.items() if folder == f or folder.startswith(f + "/")}
        for marker in sorted(wanted):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)
