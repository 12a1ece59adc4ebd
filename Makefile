# The two set-up commands (README): `make demo` runs the end-to-end demo, `make test` the tests.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned, so pip never reaches for a multi-GB build it doesn't need;
# override on a GPU box, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo demo-quick lint bench openapi container-smoke

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPY=$(CURDIR)/$(VENV)/bin/mypy scripts/typecheck.sh

demo: install
	$(VENV)/bin/selfreward demo

demo-quick: install
	$(VENV)/bin/selfreward demo --quick

bench: install
	$(VENV)/bin/python bench/bench_csr.py

openapi: install
	$(VENV)/bin/python scripts/gen_openapi.py

# Build docker/Dockerfile (CPU variant) with podman on a debootstrapped Debian base and score a
# request inside the built image (needs root; minutes; not part of CI: see docker/README.md).
container-smoke:
	bash docker/smoke.sh
