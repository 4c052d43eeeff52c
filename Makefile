# Two entry points: `make demo` (set up, train on ml-100k, evaluate, recommend) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/ml-100k-ease

.PHONY: venv install dev demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel. An open range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0

venv: $(BIN)/python

install: venv
	$(BIN)/pip install --quiet -e .

dev: venv
	$(BIN)/pip install --quiet -e '.[dev,text,llm,serve,ann,postgres]'

demo: install
	$(BIN)/lmrec datasets fetch ml-100k
	$(BIN)/lmrec train --dataset ml-100k --model ease --out $(RUN)
	$(BIN)/lmrec evaluate --run $(RUN)
	$(BIN)/lmrec recommend --run $(RUN) --user 1
	$(BIN)/lmrec recommend --run $(RUN) --user 2 --k 5
	$(BIN)/lmrec recommend --run $(RUN) --user new-visitor --history 50,172,181 --k 5

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: dev lint
	$(BIN)/python -m pytest -q

bench: dev
	$(BIN)/python benchmarks/classic.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
