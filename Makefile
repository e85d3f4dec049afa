# One command to set up and run the demo, one to set up and run the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install run test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/mmsa demo --workdir demo_output

test: install
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow

clean:
	rm -rf demo_output .prefect .pytest_cache
