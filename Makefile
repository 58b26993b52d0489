# make test  — create .venv, install lrptool with its test extras, run the tests
# make demo  — install and run lrptool on the bundled sample model
# make bench — install and run the benchmarks
# make reference-deps — add torch and zennit, which the Zennit cross-check tests and benchmarks use
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lrptool-installed
DEMO_OUT ?= demo-output

.PHONY: install reference-deps test demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# torch (the CPU wheel) and zennit, for the cross-check tests against Zennit and for the benchmarks;
# zennit goes in without its dependencies (its torchvision import is served by tests/stand_ins)
reference-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps zennit==0.5.1

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/lrptool inspect sample_models/mnist/mnist.onnx
	mkdir -p $(DEMO_OUT)
	$(BIN)/lrptool convert sample_models/mnist/mnist.onnx -o $(DEMO_OUT)/mnist.onnx
	@echo "demo: the model's graph is above; its ONNX re-export is in $(DEMO_OUT)/mnist.onnx"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
