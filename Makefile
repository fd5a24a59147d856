# Two commands do all the set-up on a fresh clone:
#   make demo   - creates .venv, installs msifusion (CPU PyTorch), runs the embedded demo
#   make test   - creates .venv, installs msifusion with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= msifusion-demo
# a wheel index to take torch from first (PyTorch's CPU or CUDA index, e.g. https://download.pytorch.org/whl/cpu),
# reinstalled from there (pip counts 2.13.0+cpu as 2.13.0); empty: pip's own index, which must serve the CPU build for
# the install to stay small. It applies when the .venv is (re)installed: a fresh clone, after `make clean`
TORCH_INDEX ?=
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')

.PHONY: demo test install clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "msifusion needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1): make PYTHON=python3.11"; \
		  exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --force-reinstall "$(TORCH_PIN)" --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/msifusion demo --out $(DEMO_OUT) --overwrite

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
