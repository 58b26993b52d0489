# make test  — create .venv, install lrptool with its test extras, run the tests
# make demo  — install and run lrptool on the bundled sample models; prints the path of the report page
# make bench — install and run the benchmarks
# make fuzz  — the long fuzz run: 10,000 mutants per model format, counts per outcome
# make reference-deps — add torch, onnxscript (its dynamo exporter) and zennit, for the cross-check tests and benchmarks
# make browser-deps — Debian's chromium and chromedriver (as root), for the tests of the HTML reports
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lrptool-installed
DEMO_OUT ?= demo-output

.PHONY: install reference-deps browser-deps test fuzz demo bench clean

install: $(STAMP)

# the demo needs lrptool alone, not the test extras (a venv made by `make test` already has it)
RUNTIME_STAMP := $(VENV)/.lrptool-runtime-installed
$(RUNTIME_STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -f $(STAMP) -a $(STAMP) -nt setup.cfg || $(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# torch (the CPU wheel) and zennit, for the cross-check tests against Zennit and for the benchmarks;
# zennit goes in without its dependencies (its torchvision import is served by tests/stand_ins)
reference-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet onnxscript==0.7.2
	$(BIN)/python -m pip install --quiet --no-deps zennit==0.5.1

browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser-deps: chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "browser-deps: install Debian's chromium and chromium-driver as root; the browser tests skip without them" >&2; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest

FUZZ_MUTANTS ?= 10000
fuzz: $(STAMP)
	LRPTOOL_FUZZ_MUTANTS=$(FUZZ_MUTANTS) LRPTOOL_FUZZ_REPORT=fuzz-report.json $(BIN)/python -m pytest -q -p no:randomly \
		tests/test_fuzz_onnx.py tests/test_fuzz_caffe.py tests/test_fuzz_keras.py tests/test_fuzz_cli.py
	@echo "fuzz: counts per outcome in fuzz-report.json"

DEMO_METHODS ?= epsilon-plus-flat,epsilon-gamma-box,gradient
SQUEEZENET := sample_models/squeezenet/SqueezeNet_deploy.prototxt --weights sample_models/squeezenet/squeezenet_dc.caffemodel

# the sample models on real pictures: SqueezeNet (Caffe with two presets and the gradient; its ONNX conversion with
# the default preset) on four photos, the face-expression model (Keras) on three faces, the MNIST CNN on four digits,
# the word CNN on four sentences; one page links them all
demo: $(RUNTIME_STAMP)
	$(BIN)/lrptool inspect sample_models/mnist/mnist.onnx --preset epsilon-plus-flat
	$(BIN)/lrptool explain sample_models/mnist/mnist.onnx sample_models/mnist/images -o $(DEMO_OUT)/mnist \
		--format png,overlay,npy,html --labels sample_models/mnist/labels.txt --jsonl $(DEMO_OUT)/mnist/explanations.jsonl
	$(BIN)/lrptool explain-text sample_models/text/sentiment.onnx sample_models/text/texts.txt -o $(DEMO_OUT)/text \
		--tokenizer words --labels sample_models/text/labels.txt --format jsonl,html,ansi
	$(BIN)/lrptool explain $(SQUEEZENET) sample_models/photos -o $(DEMO_OUT)/squeezenet-caffe --labels imagenet \
		--preset $(DEMO_METHODS) --format png,overlay,npy,grid,html --cmap black-firered --jsonl $(DEMO_OUT)/squeezenet-caffe/explanations.jsonl
	$(BIN)/lrptool convert $(SQUEEZENET) -o $(DEMO_OUT)/squeezenet.onnx
	$(BIN)/lrptool explain $(DEMO_OUT)/squeezenet.onnx sample_models/photos -o $(DEMO_OUT)/squeezenet-onnx --labels imagenet \
		--config sample_models/squeezenet/SqueezeNet_deploy.json --format png,overlay,grid,html \
		--cmap black-firered --jsonl $(DEMO_OUT)/squeezenet-onnx/explanations.jsonl
	$(BIN)/lrptool explain sample_models/fer/emotion_model.hdf5 sample_models/faces -o $(DEMO_OUT)/faces \
		--labels sample_models/fer/labels.txt --preset $(DEMO_METHODS) --target top-2 --format overlay,grid,html \
		--jsonl $(DEMO_OUT)/faces/explanations.jsonl
	@echo "demo: every run's pictures and JSON lines are in $(DEMO_OUT)/; open this page:"
	@$(BIN)/lrptool report $(DEMO_OUT) --title "lrptool demo"

bench: reference-deps
	$(BIN)/python benchmarks/bench_forward.py
	$(BIN)/python benchmarks/bench_lrp.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_evaluate.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info fuzz-report.json
