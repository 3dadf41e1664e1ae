# The two commands of the README: `make pipeline` and `make test`. Both set up what is missing.
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup pipeline test lint

setup:
	@bash scripts/setup.sh

pipeline: setup
	dvc repro

test: setup
	python -m pytest -q

lint: setup
	ruff check . && ruff format --check .
