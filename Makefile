# The product's targets: `make help` lists them (the `## ` line above each); research.mk the research ones (`make
# help-research`). Long runs are make targets whose outputs are committed (models/, docs/); tests never train at this
# scale. Every step of `make -j2 demo` is a file target: an interrupted build resumes where it stopped.
VENV    ?= .venv
DEDE    ?= $(VENV)/bin/dede
PY      ?= $(VENV)/bin/python
PRESET  ?= cpu
RUNS    ?= runs/demo-$(PRESET)
PORT    ?= 8000
BAD     := models/demo-cifar10-badencoder
CLEAN   := models/demo-cifar10-clean
# one thread per job: with two jobs on two cores, oversubscribed BLAS threads slow training ~5x
ONE     := OMP_NUM_THREADS=1
# $(HELP) MAKEFILE...: each target that has a `## ` line right above it, and that line
HELP    = awk '/^\#\# /{d=substr($$0,4);next} /^[A-Za-z][-A-Za-z0-9_.]*:([^=]|$$)/{if(d!=""){t=$$0;sub(/:.*/,"",t); \
	printf "  %-18s %s\n",t,d}} {d=""}'

.DEFAULT_GOAL := help
.PHONY: help demo examples evaluate serve bench red-team soak own-encoder test lint
.DELETE_ON_ERROR:
# The training runs behind the committed bundles (models/) are git-ignored: in a fresh checkout they are missing,
# and `make evaluate`, `examples` or `bench` must use the committed bundles instead of training them again.
# Intermediate files are only built when a prerequisite of theirs is newer than what depends on them.
.SECONDARY: $(RUNS)/clean-encoder/encoder.json $(RUNS)/badencoder/encoder.json $(RUNS)/dede-badencoder/run.json \
	$(RUNS)/dede-clean/run.json

## these targets, one line each (`make help-research`: the research targets of research.mk)
help:
	@echo "make TARGET (PRESET=$(PRESET), RUNS=$(RUNS)):"
	@$(HELP) $(firstword $(MAKEFILE_LIST))
	@echo "  help-research      the research targets (research.mk; docs/research/REPRODUCE.md)"

$(RUNS)/clean-encoder/encoder.json:
	$(DEDE) pretrain --preset $(PRESET) --out $(RUNS)/clean-encoder

$(RUNS)/badencoder/encoder.json: $(RUNS)/clean-encoder/encoder.json
	$(ONE) $(DEDE) attack badencoder --encoder $(RUNS)/clean-encoder --preset $(PRESET) --out $(RUNS)/badencoder

$(RUNS)/dede-badencoder/run.json: $(RUNS)/badencoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/badencoder --preset $(PRESET) --out $(RUNS)/dede-badencoder

$(RUNS)/dede-clean/run.json: $(RUNS)/clean-encoder/encoder.json
	$(ONE) $(DEDE) train --encoder $(RUNS)/clean-encoder --preset $(PRESET) --out $(RUNS)/dede-clean

$(BAD)/manifest.json: $(RUNS)/dede-badencoder/run.json
	$(DEDE) export --run $(RUNS)/dede-badencoder --name demo-cifar10-badencoder

$(CLEAN)/manifest.json: $(RUNS)/dede-clean/run.json
	$(DEDE) export --run $(RUNS)/dede-clean --name demo-cifar10-clean

## the demo bundle's example images and their scores (examples/), training the bundle if it is missing
examples: $(BAD)/manifest.json
	$(PY) -m training.evaluation.examples --bundle $(BAD) --out examples

## the demo bundles' honesty evaluation against the clean control (docs/results.json, docs/RESULTS.md)
evaluate: $(BAD)/manifest.json $(CLEAN)/manifest.json
	$(DEDE) evaluate --bundle $(BAD) --control-bundle $(CLEAN) --preset $(PRESET) --publish --command-line "make evaluate"

## both demo bundles (models/), then `examples` and `evaluate` (make -j2 demo: about 45 minutes on 2 cores)
demo: $(BAD)/manifest.json $(CLEAN)/manifest.json
	$(MAKE) examples evaluate

## the scoring service on the committed demo bundle, at http://127.0.0.1:PORT (PORT ?= 8000)
serve:
	$(DEDE) serve --bundle $(BAD) --port $(PORT)

## throughput and latency, one worker and two side by side (docs/PERFORMANCE.md)
bench:
	$(PY) benchmarks/bench_service.py --bundle $(BAD) --runs $(RUNS)/dede-badencoder --compare-workers 2

## hostile uploads, slow clients and oversized requests against a live service on loopback (docs/SECURITY.md)
red-team:
	$(PY) -m benchmarks.red_team --markdown

## a 2-minute soak of the service (docs/soak.json)
soak:
	$(PY) benchmarks/soak.py --bundle $(BAD) --seconds 120

## time and peak memory of train, calibrate and export for a 224-px timm ResNet-18 (docs/OWN_ENCODER.md)
own-encoder:
	$(PY) benchmarks/own_encoder.py --preset tiny --preset cpu

## the test suite
test:
	$(VENV)/bin/pytest -q

## ruff and mypy
lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy service training

include research.mk
