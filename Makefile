# The two commands of the README. Both set everything up first (scripts/setup.sh is idempotent).
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The machine may be shared: one torch/BLAS thread per process.
export OMP_NUM_THREADS := 1
DEMO_INVENTORY ?= inventories/local

.PHONY: setup demo test lint changelog sanity unit integration

setup:
	scripts/setup.sh

# Trains the embedded default (1 GA, 2 LAs, 4 clients on this machine) and prints one JSON line.
demo: setup
	ansible-playbook -i $(DEMO_INVENTORY) playbooks/site.yml
	python scripts/demo_summary.py -i $(DEMO_INVENTORY)

# antsibull-changelog lint: every fragment in changelogs/fragments/ (and changelog.yaml) is valid.
lint:
	ruff check .
	ansible-lint
	antsibull-changelog lint
	antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

# CHANGELOG.md is generated from changelogs/changelog.yaml, never edited by hand.
changelog:
	antsibull-changelog generate

sanity:
	scripts/sanity.sh

unit:
	pytest -q tests/unit

integration:
	pytest -q tests/integration

# --durations: the slowest tests, in CI's output too, to keep the run within its 40 minutes.
test: setup lint sanity
	pytest -q --durations=30 tests
