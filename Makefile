# crmapi: `make run` serves a demo on 127.0.0.1:8000 (and delivers its webhooks); `make test` runs the whole suite
# on SQLite and on a throwaway PostgreSQL: the linter, the fast tier, then the slow tier (`make lint`,
# `make test-fast` and `make test-slow` run one). All of them install what they need from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB_URL ?= sqlite:///crm.db
BIND ?= 127.0.0.1:8000
PYTEST_ARGS ?=
# pytest-xdist workers per tier (0: in the pytest process itself, e.g. for --pdb). Each worker has
# a PostgreSQL database of its own (tests/conftest.py). Measured on 2 cores: 2 workers help both
# tiers; the slow tier (tests marked `slow`: real servers, load, fuzzing) is spread by whole file,
# so each file's app servers and nginx start once.
FAST_WORKERS ?= 2
SLOW_WORKERS ?= 2

.PHONY: run lint test test-fast test-slow bench install install-test system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian packages run for real: PostgreSQL's server binaries (the tests start their own server
# from them), nginx (in front of gunicorn in tests/test_deploy.py), wrk (make bench), Chromium
# (the docs page in a real browser, tests/test_docs_browser.py, driven by the test extras' Playwright;
# never `playwright install`, whose own browser download is not used), and for the scale-out tests
# PgBouncer and iproute2 (network namespaces in tests/test_cluster.py).
system-packages:
	@missing=; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/sbin/pgbouncer || missing="$$missing pgbouncer"; \
	test -x /usr/sbin/ip || test -x /sbin/ip || test -x /usr/bin/ip || missing="$$missing iproute2"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# NOTE: set -e: a database that init-db cannot reach stops make here, before the server starts.
# The webhook worker runs in the background beside the server (granian) and stops with it (the trap).
run: $(VENV)/.installed
	@set -e; if [ "$(DB_URL)" = "sqlite:///crm.db" ] && [ ! -f crm.db ]; then \
	  token=$$($(BIN)/crmapi --database '$(DB_URL)' demo); \
	  echo "Demo data is in crm.db. Your API token:"; echo "  $$token"; echo "Try:"; \
	  echo "  curl -g -H 'Authorization: Bearer $$token' 'http://$(BIND)/api/contacts?range=[0,4]'"; \
	else \
	  $(BIN)/crmapi --database '$(DB_URL)' init-db; \
	  echo "The database exists. Organizations:"; $(BIN)/crmapi --database '$(DB_URL)' list-orgs; \
	  echo "Make a token with: $(BIN)/crmapi --database '$(DB_URL)' create-token --org ORG_ID --email you@example.com --admin"; \
	fi
	$(BIN)/crmapi --database '$(DB_URL)' worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/crmapi --database '$(DB_URL)' serve --bind '$(BIND)'

# The react-admin data provider, driven from Node against a real server (tests/test_react_admin.py).
tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --silent

# Where the tests' temporary files go (pytest's --basetemp: the SQLite databases, the servers' logs): in RAM where
# there is a /dev/shm. NOTE: a SQLite write is acknowledged once an fdatasync of its WAL returned, 1-3 ms on this
# disk and nothing on tmpfs, as the throwaway PostgreSQL runs with fsync=off; the code path is the same.
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo /tmp)
# A throwaway PostgreSQL and temporary directory for the rest of the recipe's shell, deleted when it exits.
START_POSTGRES = set -e; dir=$$(mktemp -d /tmp/crmapi-pg.XXXXXX); tmp=$$(mktemp -d $(TEST_TMPDIR)/crmapi-test.XXXXXX); \
	trap 'scripts/pgtmp.sh stop "$$dir"; rm -rf "$$tmp"' EXIT; \
	url=$$(scripts/pgtmp.sh start "$$dir"); \
	echo "throwaway PostgreSQL at $$url"; \
	export CRMAPI_TEST_POSTGRES_URL="$$url"
# NOTE: pytest's status 5 is "no tests collected": PYTEST_ARGS may name files of the other tier only.
TIER = || { status=$$?; [ $$status = 5 ] || exit $$status; }
FAST_TIER = echo '== fast tier'; $(BIN)/pytest -m 'not slow' -n $(FAST_WORKERS) --basetemp "$$tmp/fast" $(PYTEST_ARGS) $(TIER)
SLOW_TIER = echo '== slow tier'; $(BIN)/pytest -m slow -n $(SLOW_WORKERS) --dist loadfile --no-loadscope-reorder --basetemp "$$tmp/slow" $(PYTEST_ARGS) \
	$(TIER)

# NOTE: the code compiled once, before the hundreds of processes the tests start (app servers and their workers, the
# CLI) import it: where PYTHONDONTWRITEBYTECODE is set, each of them compiled crmapi again (~0.1 s of CPU each).
COMPILE = $(BIN)/python -m compileall -q -x node_modules crmapi bench tests

# ruff's rules (pyproject.toml): unused imports and variables, undefined names, syntax. In a second.
LINT = echo '== lint'; $(BIN)/ruff check . && $(BIN)/ruff format --check .

lint: $(VENV)/.installed-test
	@$(LINT)

# The linter, then the fast tier, so a failure shows early; the slow tier runs only if the fast one passed.
test: $(VENV)/.installed-test system-packages tests/js/node_modules/.package-lock.json
	@set -e; $(LINT); $(COMPILE); $(START_POSTGRES); $(FAST_TIER); $(SLOW_TIER)

test-fast: $(VENV)/.installed-test system-packages
	@set -e; $(LINT); $(COMPILE); $(START_POSTGRES); $(FAST_TIER)

test-slow: $(VENV)/.installed-test system-packages tests/js/node_modules/.package-lock.json
	@$(COMPILE); $(START_POSTGRES); $(SLOW_TIER)

# The benchmark: 100k contacts by default (CONTACTS=1000000 for the big run), both databases,
# crmapi beside its floors; results in bench/results/<date>.md. See bench/README.md.
bench: $(VENV)/.installed system-packages
	bash bench/bench.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
