# The two commands of the README:
#   make run    set up, start etcd + qvdc + one node daemon with a local pool, show live status
#   make test   set up, lint, run the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test faults lint setup protos check-protos format bench clean

setup:
	@scripts/bootstrap.sh

run: setup
	@$(PY) scripts/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests --explicit-package-bases --allow-untyped-defs --allow-untyped-calls \
		--disable-error-code=union-attr
	$(VENV)/bin/lint-imports
	scripts/gen_protos.sh --check

# pytest exits 5 when it collected no test: a suite that runs nothing proves nothing.
# bootstrap installed every storage server, so a missing Ceph fails instead of skipping.
# Coverage (branch, in-process and the `python -m qvdc` / `python -m node` children; see
# [tool.coverage] in pyproject.toml) fails the run under COV_FLOOR, and the pure domain
# under DOMAIN_COV_FLOOR. Both floors sit a little under the measured figures: raise them
# when coverage grows (measured 91.8 % and 96.0 % at 80a0c4a). A partial run
# (PYTEST_ARGS=tests/...) wants COV_ARGS= as well.
COV_FLOOR := 90
DOMAIN_COV_FLOOR := 95
COV_ARGS ?= --cov --cov-report=term --cov-fail-under=$(COV_FLOOR)
test: lint
	@QUANTIX_REQUIRE_CEPH=1 $(VENV)/bin/pytest $(COV_ARGS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	if [ $$rc -eq 0 ] && [ -n "$(COV_ARGS)" ]; then \
		$(VENV)/bin/coverage report --include='qvdc/domain/*' --no-skip-covered \
			--fail-under=$(DOMAIN_COV_FLOOR) || rc=$$?; \
	fi; exit $$rc

# The fault suite (tests/faults/, pytest marker `faults`, deselected by default): real
# etcd, controller replicas, node daemons and simulated hosts on loopback, one fault at a
# time, each printing its figure and merging it into .run/faults/results.json, which
# docs/reliability.md quotes. make test runs its fast test only; .ci/run runs this after it.
faults: setup
	$(VENV)/bin/pytest -m faults -s tests/faults

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: setup
	scripts/gen_protos.sh

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
