PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.stamp

.PHONY: venv test test-slow demo clean

venv: $(STAMP)

# Create .venv only if missing; install the CPU build of torch FIRST (pip takes
# the wheel on this machine's disk), so that the project's torch range is already
# satisfied and pip never pulls a multi-GB CUDA build. Re-runs when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e ".[test,plot]"
	touch $(STAMP)

# CI runs `make test`: the tests marked slow (200-example property tests, the 1,000-step soak)
# run with `make test-slow`.
test: venv
	$(VENV)/bin/python -m pytest tests -m "not slow"

test-slow: venv
	$(VENV)/bin/python -m pytest tests -m slow

demo: venv
	$(VENV)/bin/python -m fxckpt.demo

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
