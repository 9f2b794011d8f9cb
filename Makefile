# gcl-book: `make book` regenerates every result, `make test` checks everything. Both set themselves up.
#
#   make book                                   the book on the embedded synthetic shop (CPU, <= 20 min)
#   make book DATA_DIR=... IMAGE_ROOT=... MODEL=ViT-B-32 PRETRAINED=...   the same book on real data
#                                               (no PRETRAINED: the model's standard open_clip tag, which
#                                               must be in the local cache; PRETRAINED=none: random init)
#   make book-quick                             the whole book on the `tiny` shop (CI, a few minutes)
#   make test                                   unit tests + the quick book
#   make reproduce DATA_DIR=... IMAGE_ROOT=... CHECKPOINTS="a-states.pt b-states.pt"
#                                               the released checkpoints vs the published rows, PASS/FAIL
#                                               (TEST_CSV=query_tiny.csv CORPUS=corpus_tiny.json instead of
#                                               DATA_DIR: the publisher's tiny test; no CHECKPOINTS: what to
#                                               download; REPRO_MODEL=ViT-B-32 when a file name does not say)
#   make lab                                    JupyterLab with the paired notebooks
#   make clean                                  remove generated data, executed notebooks and HTML

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PRESET     ?= small
SEED       ?= 0
SYNTH_DIR  := data/synth-$(PRESET)-seed$(SEED)
DATA_DIR   ?= $(SYNTH_DIR)
IMAGE_ROOT ?= $(DATA_DIR)/images
MODEL      ?= default
PRETRAINED ?=
BOOK_NAME  ?= main
# released checkpoints for `make reproduce` and chapter 6 (space-separated), their architecture when the
# file names do not say it, and instead of DATA_DIR one split CSV + corpus JSON (the publisher's tiny test)
CHECKPOINTS ?=
REPRO_MODEL ?=
TEST_CSV    ?=
CORPUS      ?=
# executed notebooks + pages are staged here, HTML goes to $(HTML_DIR)/_build/html
STAGE      := build/$(BOOK_NAME)
HTML_DIR   ?= book

# training overrides for every run, e.g. RUN_OVERRIDES="epochs=2 batch_size=64"
RUN_OVERRIDES ?=

NOTEBOOKS  := 01_explore_data 02_multi_split 03_train 04_evaluate 05_paper_tables 06_reproduce 07_beyond_paper
EXECUTED   := $(NOTEBOOKS:%=$(STAGE)/%.ipynb)
PAGES      := $(wildcard book/*.md)
GCLCORE    := $(wildcard gclcore/*.py gclcore/*/*.py gclcore/model_configs/*.json)
EXPERIMENTS := book/experiments.yaml
# run names, from the experiments file itself (`=`: read when a recipe needs them, once .venv exists)
RUNS        = $(shell $(PY) -m gclcore.experiments list $(EXPERIMENTS))
EXPECTED_KEY := $(if $(filter $(SYNTH_DIR),$(DATA_DIR)),synth-$(PRESET)-seed$(SEED),)

# Each notebook is given only parameters its `parameters` cell declares (tests/test_notebook_usage.py
# checks these lists against the notebooks), all paths absolute. 03 also takes any TrainConfig field:
# RUN_OVERRIDES go to it and to the other runs alike.
NB_PARAMS_01_explore_data  := data_dir image_root
NB_PARAMS_02_multi_split   := data_dir seed
NB_PARAMS_03_train         := data_dir image_root model pretrained experiments_file runs_dir resume keep_state
NB_PARAMS_04_evaluate      := data_dir image_root model pretrained experiments_file runs_dir
NB_PARAMS_05_paper_tables  := data_dir image_root model pretrained experiments_file runs_dir expected_file expected_key
NB_PARAMS_06_reproduce     := data_dir image_root test_csv corpus checkpoints architecture expected_file
NB_PARAMS_07_beyond_paper  := data_dir image_root model pretrained experiments_file runs_dir
NB_VALUE_data_dir          := $(abspath $(DATA_DIR))
# the default <data_dir>/images only when it exists (a parquet dataset has its images inside)
NB_VALUE_image_root        := $(if $(or $(filter-out file,$(origin IMAGE_ROOT)),$(wildcard $(IMAGE_ROOT))),$(abspath $(IMAGE_ROOT)))
NB_VALUE_model             := $(MODEL)
NB_VALUE_pretrained        := $(PRETRAINED)
NB_VALUE_experiments_file  := $(abspath $(EXPERIMENTS))
NB_VALUE_runs_dir          := $(abspath $(STAGE)/runs)
NB_VALUE_expected_file     := $(abspath book/expected.yaml)
NB_VALUE_expected_key      := $(EXPECTED_KEY)
NB_VALUE_seed              := $(SEED)
NB_VALUE_checkpoints       := $(CHECKPOINTS)
NB_VALUE_architecture      := $(REPRO_MODEL)
NB_VALUE_test_csv          := $(if $(TEST_CSV),$(abspath $(TEST_CSV)))
NB_VALUE_corpus            := $(if $(CORPUS),$(abspath $(CORPUS)))
# Real data: no cell time limit (notebook 03's training cell runs for hours), and every run continues its
# own saved state when make is run again after an interruption, or reuses it once ended. The synthetic shop:
# 30 min per cell (a hung cell fails CI) and runs retrain from scratch (seconds), so a code change always
# reaches the book; their states, never read again, are removed when they end (keep_state: half the disk).
REAL_DATA   := $(if $(filter $(SYNTH_DIR),$(DATA_DIR)),,yes)
NB_VALUE_resume            := $(if $(REAL_DATA),latest,)
NB_VALUE_keep_state        := $(if $(REAL_DATA),True,False)
NB_TIMEOUT  := $(if $(REAL_DATA),,--execution-timeout 1800)
RUN_PARAMS  = $(foreach o,$(RUN_OVERRIDES),-p $(subst =, ,$(o)))
nb_params   = $(foreach p,$(NB_PARAMS_$(1)),-p $(p) '$(NB_VALUE_$(p))') $(if $(filter 03_train,$(1)),$(RUN_PARAMS))
RUN_SETS    = --set data_dir=$(NB_VALUE_data_dir) --set image_root=$(NB_VALUE_image_root) \
              --set model=$(MODEL) --set pretrained=$(PRETRAINED) --set resume=$(NB_VALUE_resume) \
              --set keep_state=$(NB_VALUE_keep_state) $(foreach o,$(RUN_OVERRIDES),--set $(o))

# this checkout's gclcore, whatever else is installed (e.g. an editable install of another worktree)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup test book book-quick reproduce lab clean sync-notebooks check-notebooks lint

setup: $(STAMP)

# Re-installs only when the dependencies (pyproject.toml) change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[book,test]'
	@touch $@

test: setup check-notebooks lint
	@$(PY) -m pytest -q -x tests || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }
	$(MAKE) book-quick

book: setup $(HTML_DIR)/_build/html/index.html
	@echo "book: $(HTML_DIR)/_build/html/index.html"

book-quick:
	$(MAKE) book PRESET=tiny BOOK_NAME=quick HTML_DIR=build/quick RUN_OVERRIDES="batch_size=32 epochs=3"

# The embedded default data: generated, never downloaded.
$(SYNTH_DIR)/.done: gclcore/synth.py gclcore/splits.py $(wildcard gclcore/data/*.py) | setup
	$(PY) -m gclcore.synth $(SYNTH_DIR) --preset $(PRESET) --seed $(SEED)
	@touch $@

DATA_STAMP := $(if $(filter $(SYNTH_DIR),$(DATA_DIR)),$(SYNTH_DIR)/.done,)

$(STAGE)/%.ipynb: notebooks/%.ipynb notebooks/%.py $(GCLCORE) $(DATA_STAMP) | setup
	@mkdir -p $(STAGE)
	$(VENV)/bin/papermill $< $@ $(call nb_params,$*) $(NB_TIMEOUT) --progress-bar

# The training runs of the experiments file, all in one process (they share every prerequisite, so they
# always go stale together); the main GCL run, gcl-linear, is notebook 03 itself.
$(STAGE)/runs/.done: $(EXPERIMENTS) $(GCLCORE) $(DATA_STAMP) $(STAGE)/03_train.ipynb | setup
	$(PY) -m gclcore.experiments run $(EXPERIMENTS) $(filter-out gcl-linear,$(RUNS)) --out $(STAGE)/runs $(RUN_SETS)
	@touch $@

$(STAGE)/03_train.ipynb: $(EXPERIMENTS)
$(STAGE)/04_evaluate.ipynb: $(STAGE)/runs/.done
$(STAGE)/05_paper_tables.ipynb: $(STAGE)/runs/.done book/expected.yaml
$(STAGE)/07_beyond_paper.ipynb: $(STAGE)/runs/.done

$(STAGE)/%.md: book/%.md
	@mkdir -p $(STAGE)
	cp $< $@

# the performance page is bench/RESULTS.md, with the plots next to it
BENCH_PLOTS := $(wildcard bench/*.png)
$(STAGE)/performance.md: bench/RESULTS.md
	@mkdir -p $(STAGE)
	cp $< $@

$(STAGE)/%.png: bench/%.png
	@mkdir -p $(STAGE)
	cp $< $@

$(HTML_DIR)/_build/html/index.html: _config.yml _toc.yml $(PAGES:book/%=$(STAGE)/%) $(STAGE)/performance.md \
                                      $(BENCH_PLOTS:bench/%=$(STAGE)/%) $(EXECUTED)
	$(VENV)/bin/jupyter-book build $(STAGE) --config $(abspath _config.yml) --toc $(abspath _toc.yml) --path-output $(HTML_DIR) -W --keep-going

CHECKPOINTS ?=
TEST_CSV    ?=
CORPUS      ?=
REPRO_MODEL ?=
# paths go as typed (python expands ~ and resolves them against this folder); with TEST_CSV an image root
# is passed only when given (else the one next to the CSV)
REPRO_DATA   = $(if $(TEST_CSV),--test-csv '$(TEST_CSV)' --corpus '$(CORPUS)',--data-dir '$(DATA_DIR)') \
               $(if $(and $(TEST_CSV),$(filter file,$(origin IMAGE_ROOT))),,--image-root '$(IMAGE_ROOT)')

# exit 2 without CHECKPOINTS is the download instructions, not a failure
reproduce: setup $(if $(and $(CHECKPOINTS),$(if $(TEST_CSV),,x)),$(DATA_STAMP))
ifeq ($(strip $(CHECKPOINTS)),)
	@$(PY) -m gclcore.reproduce || [ $$? -eq 2 ]
else
	$(if $(TEST_CSV),$(if $(CORPUS),,$(error TEST_CSV needs CORPUS=, the corpus JSON it is evaluated against)),\
	  $(if $(filter file,$(origin DATA_DIR)),$(error give DATA_DIR= (the Marqo-GS-10M folder) or TEST_CSV= with CORPUS=)))
	$(PY) -m gclcore.reproduce $(REPRO_DATA) --out build/reproduce $(if $(REPRO_MODEL),--model $(REPRO_MODEL)) \
	  $(foreach c,$(CHECKPOINTS),'$(c)')
endif

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# Notebooks are edited as py:percent (reviewed) and paired with stripped .ipynb files (JupyterLab).
sync-notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

# ruff's rules and exceptions are in pyproject.toml
lint: setup
	$(PY) -m ruff check .

check-notebooks: setup
	$(PY) -m gclcore.notebooks check notebooks

clean:
	rm -rf build book/_build data/synth-* .pytest_cache
