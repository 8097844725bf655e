# Ticket Enhancer: `make run` starts the service on embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements/base.txt requirements/dev.txt | cksum | cut -d' ' -f1)
# Checkov (a manifest policy scanner used by the deploy tests) pins libraries that clash with ours.
TOOLS  := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-$(shell cksum < requirements/tools.txt | cut -d' ' -f1)

.PHONY: venv tools run test lint format clean

$(STAMP): requirements/base.txt requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

$(TOOLS_STAMP): requirements/tools.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet -r requirements/tools.txt
	@rm -f $(TOOLS)/.installed-*
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

# Web (gunicorn, port 8000) + worker (qcluster) on SQLite, the Django-Q ORM broker and the offline LLM.
# Loopback only unless asked: `make run BIND=0.0.0.0:8000` (the demo prints an admin password).
BIND ?= 127.0.0.1:8000
# Cookies are not marked Secure here because the local server speaks plain HTTP.
run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py setup_demo
	SESSION_COOKIE_SECURE=false CSRF_COOKIE_SECURE=false $(BIN)/python manage.py runlocal --bind $(BIND)

test: venv tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(TOOLS) var staticfiles .pytest_cache
