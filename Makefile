# visionbench: `make demo` (set up, train the built-in demo, print its table) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data postgres demo test test-all bench clean

setup: $(STAMP) data postgres

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,lensing,export,tensorboard,postgres]'
	touch $(STAMP)

# Fashion-MNIST: Debian's dataset-fashion-mnist where the files are missing and we are root on Debian.
data:
	@if [ -e $(FMNIST) ] || [ -n "$$VISIONBENCH_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "note: Fashion-MNIST not found; visionbench will download it or say where to put the files"; fi

# PostgreSQL: Debian's server, which the search tests start on loopback in a temporary folder (never as a service).
postgres:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's postgresql"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "note: PostgreSQL not found; the search tests on PostgreSQL need it (apt-get install postgresql)"; fi

demo: setup
	$(BIN)/visionbench train configs/demo/small_cnn.yaml
	$(BIN)/visionbench train configs/demo/resnet_cfg_small.yaml
	$(BIN)/visionbench train configs/demo/fastnet_s.yaml
	$(BIN)/visionbench report runs/demo --latest --cols data.name

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m ''

bench: setup
	$(BIN)/python benchmarks/fmnist_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
