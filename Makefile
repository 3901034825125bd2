# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# This machine installs these two from its disk; override on other platforms.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean browser docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,all]'   # all: the model-spec libraries, tested too; docs: the site
	touch $(STAMP)

DEMO_RUN := build/demo-run

demo: $(STAMP) $(DEMO_RUN)/level8.pt
	$(BIN)/oodml datasets list
	$(BIN)/oodml datasets info glyphs
	# rebuilt under its own version name, so the diff compares the rebuild's own bytes with the published set
	$(BIN)/oodml make-splits glyphs --version rebuilt --out build/demo-splits
	$(BIN)/oodml splits verify
	$(BIN)/oodml splits diff build/demo-splits/glyphs/rebuilt glyphs@v1   # exits 1 unless it reproduces
	$(BIN)/oodml evaluate '$(DEMO_RUN)/level{level}.pt' --dataset glyphs --splits v1 \
		--fewshot 2 --episodes 3 --out build/demo-results
	@echo "degradation curve: build/demo-results/curve-recall_at_1.png (and .svg)"

# A quick per-level model for the demo (CPU, about 2 minutes); the baselines use longer runs.
$(DEMO_RUN)/level8.pt: $(STAMP)
	$(BIN)/oodml train --dataset glyphs --splits v1 --level all --loss multi-similarity \
		--iterations 100 --out $(DEMO_RUN)

# One worker per core, each test file whole on one worker (its module fixtures are built once).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=20

# The leaderboard page is tested in a real headless browser: install Debian's chromium when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "installing chromium for the leaderboard browser test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
		( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium ) \
			>/dev/null 2>&1 || echo "warning: could not install chromium; the browser test will be skipped"; }

# The documentation site, built strictly (a broken link or reference fails it) into build/site.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check oodml tests tools

clean:
	rm -rf $(VENV) build *.egg-info
