# Set-up and the two everyday commands. `make demo` and `make test` create (or reuse) .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On the development machines this pins the torch build that lets torchvision, lpips and facexlib import;
# elsewhere pip resolves torch normally (override with `make TORCH_PINS= ...`).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# The CUDA toolkit root for compiling the custom ops (a wrapper `nvcc` on PATH misleads torch's own guess).
export CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))

.PHONY: demo test test-all venv clean

$(BIN)/stylecli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS) -e '.[test]'
	touch $@

venv: $(BIN)/stylecli

demo: venv
	$(BIN)/stylecli edit examples/face.png --direction smile --strength 2 --method sfe -o out/demo
	@echo "wrote out/demo/ (examples/face.png made to smile by sfe on the embedded synthface-64 pack)"

# The fast tier (minutes): everything but the tests marked slow, one worker process per core (TEST_WORKERS=0: one
# process), each on one thread (two workers of two threads each would fight over a 2-core CPU).
TEST_WORKERS ?= auto
test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS)

# Everything, including compiling the CUDA sources and two-process torchrun runs (a GPU adds its own tests).
test-all: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
