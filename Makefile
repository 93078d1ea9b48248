# Two commands: `make book` (set up, fetch models and data, run the notebooks, build the book)
# and `make test` (set up, run the tests). Everything lives in .venv; nothing is installed globally.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
# Optional data folder (BIG-bench task files and toxigen/prompts). ToxiGen exists only there;
# ../shared/data is used when it exists, like a user's own copy. Override: make book HPR_DATA_DIR=...
HPR_DATA_DIR ?= $(if $(wildcard ../shared/data/toxigen),$(abspath ../shared/data),)
export HPR_DATA_DIR

.PHONY: book test install fetch run html bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, alone and exact: a looser spec would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,test]'
	touch $@

install: $(VENV)/.installed

fetch: install
	$(BIN)/hpr fetch --profile $(PROFILE)

run: fetch
	$(BIN)/hpr run --profile $(PROFILE)

html: install
	$(BIN)/hpr book

book: run html
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: install
	$(BIN)/hpr fetch --models smollm2-135m-instruct --no-data
	$(BIN)/python -m pytest -q

bench: fetch
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check hpr tests benchmarks tools
	$(BIN)/ruff format --check hpr tests benchmarks tools
	$(BIN)/mypy

clean:
	rm -rf _build
