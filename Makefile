# The two commands the README names: `make demo` and `make test`. Both run the
# idempotent set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m lab.demo

test: setup
	$(PY) -m pytest -q -ra
