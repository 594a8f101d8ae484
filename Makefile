# make demo   install into .venv/ (if needed) and train 3 -> 6 -> 12 layers (configs/demo.yaml)
# make test   install into .venv/ (if needed) and run the whole test suite
# make lint   ruff format --check, ruff check, import-linter's layer contracts
PY      ?= python3
VENV    := .venv
# the CPU wheel; on a CUDA machine: make install TORCH=torch
TORCH   ?= torch==2.13.0

.PHONY: install demo smoke test lint clean
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/staged run configs/demo.yaml

smoke: install
	$(VENV)/bin/staged run configs/smoke.yaml

# two pytest-xdist workers, one per core (tests run one thread each); a worker takes whole groups: a module, or
# every test of one costly session fixture (tests/conftest.py). One file or test: .venv/bin/python -m pytest PATH
test: install
	$(VENV)/bin/python -m pytest -n 2

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf .staged
