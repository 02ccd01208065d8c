# visionbench: `make demo` (set up, train and compare two models, explain one, write the report) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO := runs/demo

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

# Two models on Fashion-MNIST (under 2 minutes on 2 idle CPU cores; README), Grad-CAM grids of one, the
# table. Run again, it skips what is done. tests/cli/test_demo.py runs these lines on synthetic data.
demo: $(STAMP) data
	$(BIN)/visionbench compare configs/demo/compare.yaml
	test -f $(DEMO)/model.name=resnet_cfg_small/explain/gradcam-test/panels.json || $(BIN)/visionbench explain $(DEMO)/model.name=resnet_cfg_small --method gradcam --n 8
	$(BIN)/visionbench report $(DEMO)
	@echo
	@echo "Open $(DEMO)/report.html: the table, each run's curves, confusion matrix, config and Grad-CAM grids."
	@echo "Then try (after . $(BIN)/activate):"
	@echo "  visionbench explain $(DEMO)/model.name=small_cnn --method integrated_gradients --classes Shirt,Coat"
	@echo "  visionbench analyze $(DEMO)/model.name=resnet_cfg_small --suite robustness --images 1000"
	@echo "  visionbench train configs/fashion_mnist/fast_cpu.yaml    # all 60,000 images: >= 91 % in about 25 s"

test: setup
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/pytest -q -m ''

bench: setup
	$(BIN)/python benchmarks/fmnist_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
