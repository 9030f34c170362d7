# Two commands on a fresh Debian machine: `make demo` and `make test`.
# Both install what they need first: Debian packages (as root) and a virtualenv.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
APT_PACKAGES := containerd docker-registry skopeo nginx wrk iproute2 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps venv demo test test-fast lint bench clean

all: test

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: deps venv
	$(PY) -m bench demo $(ARGS)

test: deps venv lint
	$(PY) -m pytest -q $(ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not integration" $(ARGS)

lint: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: deps venv
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

# The standalone executable for bare-metal hosts (x86_64 Linux, glibc): dist/mirror.
# PyInstaller comes with the dev extras; container/binary/mirror.spec lists what it bundles.
BINARY_DIST ?= dist
.PHONY: binary
binary: venv
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN \
	  --distpath $(BINARY_DIST) --workpath build/pyinstaller container/binary/mirror.spec
	$(BINARY_DIST)/mirror version --format json

# The container image, without a container engine: `mirror` frozen into one directory
# (nothing unpacked at start, so the root filesystem stays read-only), packed by
# container/image.py into the OCI layout $(IMAGE_DIST), tagged with the version in
# mirror/version.py. PUSH=<registry>/<repository> copies it there with skopeo
# (credentials: `skopeo login <registry>`; IMAGE_ARGS=--dest-tls-verify=false for a
# plain-HTTP registry). container/Containerfile builds the same image with an engine.
# SOURCE_DATE_EPOCH and PYTHONHASHSEED make PyInstaller's output the same on every
# build, so two builds on one machine give one digest.
IMAGE_DIST ?= dist/image
IMAGE_EPOCH ?= 1704067200
PUSH ?=
IMAGE_ARGS ?=
.PHONY: image
image: venv
	MIRROR_ONEDIR=1 SOURCE_DATE_EPOCH=$(IMAGE_EPOCH) PYTHONHASHSEED=0 \
	  $(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN \
	  --distpath build/onedir --workpath build/pyinstaller-onedir container/binary/mirror.spec
	build/onedir/mirror/mirror version --format json
	$(PY) -m container.image build/onedir/mirror --out $(IMAGE_DIST) \
	  $(if $(PUSH),--push $(PUSH)) $(IMAGE_ARGS)
