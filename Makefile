# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv/ in the repository root and install the project into it.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.xsyn-installed
BIN    := $(VENV)/bin

.PHONY: install demo test export-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,ray,dev]'
	touch $(STAMP)

install: $(STAMP)

# Main job on the embedded default (tiny preset): export every graph with parity checks,
# serve them from a real tritonserver, show health, query every leaf model once, stop.
demo: $(STAMP)
	$(BIN)/xsyn export --preset tiny
	$(BIN)/xsyn demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Full-size (SD-1.4 + SAM ViT-H shapes, random weights) export; not part of CI.
export-full: $(STAMP)
	$(BIN)/xsyn export --preset full --out build/full

clean:
	rm -rf build model_repository/*/[0-9]*/ model_repository/parity_report.json
