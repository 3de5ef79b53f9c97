# The two commands a newcomer needs (see README.md):
#   make demo   run the main job
#   make test   run every test, type checks and the documentation build included,
#               then the tests on the other supported Pythons this machine has
# Both create (or reuse) the project's own virtual environment in .venv and
# install what they need into it; nothing else is required but Python and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test typecheck pytest pytest-compiled compiled-tests test-pythons docs venv clean compiled

demo: $(STAMP)
	$(BIN)/python -m trio_zc demo

# The main suite runs last, so that its summary ends the output (.ci/run reads it).
test: typecheck docs test-pythons pytest-compiled pytest

typecheck: $(STAMP)
	$(BIN)/python -m ruff check trio_zc tests examples benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy --config-file tests/typing/mypy.ini tests/typing

# The documentation, built with warnings as errors and every cross-reference checked (-n), offline.
docs: $(STAMP)
	$(BIN)/python -m sphinx -n -W --keep-going -q -b html docs docs/_build/html

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# requires-python is ">=3.10": the suite also runs on the oldest and the newest
# supported Python, each in its own .venv-X.Y, where the machine has them (on
# PATH or in pyenv; one that is missing is skipped with a line saying so).
# The tests marked slow run once, in the main run.
EXTRA_PYTHONS ?= 3.10 3.13

test-pythons:
	@for version in $(EXTRA_PYTHONS); do \
		.ci/test-on-python $$version -m "not slow" $(PYTEST_ARGS) || exit 1; \
	done

venv: $(STAMP)

# The optional compiled build (docs/install.rst): the modules setup.py lists,
# compiled by mypyc, installed with the rest of the package into
# build/compiled -- never next to the sources, where they would shadow them.
# Rebuilt when a source changes; a compile error fails (TRIO_ZC_COMPILE=required).
COMPILED := build/compiled
SOURCES  := $(shell find trio_zc -name '*.py') setup.py pyproject.toml

compiled: $(COMPILED)/.built

$(COMPILED)/.built: $(STAMP) $(SOURCES)
	rm -rf $(COMPILED)
	TRIO_ZC_COMPILE=required $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation \
		--target $(COMPILED) .
	rm -rf $(COMPILED)/trio_zc-*.dist-info
	touch $@

# The suite against the compiled build, on this Python (part of `make
# test`): the sans-I/O layer, the bad-input table through the API, the API
# files, the real kernels and the guarantees, with the test files copied next to the compiled
# package so that everything they import, child processes included, is the
# compiled copy (tests/test_build.py checks). The few tests that reach into
# the library in ways only interpreted code allows say so and skip there
# (tests/builds.py: pure_only). The real kernels' tests (tests/kernels) run
# here too: their modules are interpreted in both builds, but they subclass
# and call the compiled ones. Not here yet (open work): tests/tools (the
# examples, benchmarks, demo and docs blocks, and the repository's own checks).
# A compile error fails. A machine with no C compiler or no Python headers
# skips this with a line saying so -- unless REQUIRE_COMPILED=1 (.ci/run sets
# it), where that fails too.
COMPILED_API := af_unix asgi asgi_adversary bad_input e2e exceptions fast_paths headers http http_cache http_heads \
	image_workers images lease mock pool pool_limits send_head send_hold serve slow_peers stateful stream stream_conformance
COMPILED_TESTS ?= tests/test_build.py tests/sansio $(COMPILED_API:%=tests/api/test_%.py) tests/kernels tests/guarantees
CAN_COMPILE := import os, shlex, shutil, sysconfig; \
	cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]; \
	headers = os.path.join(sysconfig.get_paths()["include"], "Python.h"); \
	missing = [what for what, ok in (("a C compiler (" + cc + ")", shutil.which(cc)), ("Python.h", os.path.exists(headers))) if not ok]; \
	print(" and ".join(missing)) if missing else None; raise SystemExit(1 if missing else 0)

pytest-compiled: $(STAMP)
	@missing=$$($(BIN)/python -c '$(CAN_COMPILE)'); \
	if [ -n "$$missing" ]; then \
		echo "pytest-compiled: the compiled build is not tested: this machine lacks $$missing"; \
		[ "$(REQUIRE_COMPILED)" != 1 ] || exit 1; \
	else \
		$(MAKE) --no-print-directory compiled-tests; \
	fi

compiled-tests: compiled
	rm -rf $(COMPILED)/tests $(COMPILED)/docs
	cp -r tests docs pyproject.toml setup.py $(COMPILED)/
	cd $(COMPILED) && TRIO_ZC_EXPECT_COMPILED=1 ../../$(BIN)/python -m pytest -p no:cacheprovider \
		-m "not slow" $(COMPILED_TESTS) $(PYTEST_ARGS)

# setuptools announces every editable install with a ten-line banner that asks
# nothing of anyone; it was most of what a first `make demo` printed.
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation"

# Reinstall whenever the project's metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(EDITABLE_QUIET) $(BIN)/python -m pip install --quiet -e '.[dev,images]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(VENV)-3.* build dist *.egg-info .mypy_cache .pytest_cache docs/_build
