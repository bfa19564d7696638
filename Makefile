# The two commands the README names: `make demo` and `make test`. Both run the idempotent
# set-up first. The other test targets run one tier each (docs/testing.md).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -ra
# Compiled modules and pytest's rewritten test modules are cached between runs (an environment
# that turns bytecode off would make every run recompile some 300 modules: 10 s of collection).
export PYTHONDONTWRITEBYTECODE :=
# Everything that needs root, the kernel, a server, a browser, kubectl, or takes long.
NOT_FAST := kernel or e2e or lab or slow or fuzz or needs_root or needs_postgres or needs_prometheus or needs_browser or needs_kubectl or containers

.PHONY: images setup demo test test-fast test-kernel test-e2e lab-ci test-containers lint venv-ready
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m lab.demo

# The agent's and the responder's images, built with podman (scripts/images.sh says how).
images: setup
	@bash scripts/images.sh

# The README's test command and CI's: static checks, then every tier.
test: setup lint
	$(PYTEST) --durations=25

# Under a minute on 2 vCPUs, as any user, with no servers: parsers, models, stores on SQLite,
# attribution, rendering, the HTTP handlers in-process.
test-fast: venv-ready
	$(PYTEST) -p no:cacheprovider -m "not ($(NOT_FAST))"

test-kernel: setup
	$(PYTEST) -m kernel

test-e2e: setup
	$(PYTEST) -m e2e

lab-ci: setup
	$(PYTEST) -m lab

test-containers: setup
	$(PYTEST) -m containers

lint: venv-ready
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

venv-ready:
	@test -x $(PY) || { echo "no $(VENV): run 'make setup' once as root"; exit 1; }
