# Two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: users with GPUs bring their own CUDA build; here the CPU build is local.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev,umap]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
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
