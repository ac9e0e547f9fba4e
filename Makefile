# A fresh machine needs nothing but python3: each target sets up .venv from this project's files.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; any other version pulls a multi-GB CUDA build on this kind of machine.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: help sweep test lint format bench cluster-build cluster argo-real image push clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

sweep: $(BIN)/.installed  ## run the default sweep on this machine (pass ARGS="cpu=1,2 tensor_dim=256,512")
	METAFLOW_USER=$${METAFLOW_USER:-$${USER:-torchperf}} $(BIN)/python sweep_deployer.py -m $(ARGS)

test: $(BIN)/.installed cluster-build  ## run the test suite (builds the real control plane first)
	METAFLOW_USER=$${METAFLOW_USER:-$${USER:-torchperf}} $(BIN)/python -m pytest $(ARGS)

lint: $(BIN)/.installed  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed  ## ruff format in place
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(BIN)/.installed  ## print the benchmark figures (fidelity, sweep overhead, analytics scaling, argo fan-out)
	for b in benchmarks/[!_]*.py; do METAFLOW_USER=$${METAFLOW_USER:-torchperf} $(BIN)/python $$b || exit 1; done

cluster-build:  ## build the real control plane from source (Go; minutes the first time)
	cluster/build.sh

cluster: $(BIN)/.installed cluster-build  ## start Kubernetes + Argo + Argo Events here and wait (root)
	METAFLOW_USER=$${METAFLOW_USER:-$${USER:-torchperf}} $(BIN)/python -m cluster.run up

argo-real: $(BIN)/.installed cluster-build  ## an Argo sweep on that cluster (root; ARGS="cpu=1,2 tensor_dim=64,128")
	METAFLOW_USER=$${METAFLOW_USER:-$${USER:-torchperf}} $(BIN)/python -m cluster.run sweep $(ARGS)

image:  ## build the pods' image for Argo from image/ (make image IMAGE=registry/torchperf:2.13.0; needs docker)
	@test -n "$(IMAGE)" || { echo "error: IMAGE is not set: make image IMAGE=registry/name:tag" >&2; exit 2; }
	docker build --build-arg TORCHPERF_IMAGE="$(IMAGE)" -t "$(IMAGE)" image/

push: image  ## build and push the pods' image (make push IMAGE=...)
	docker push "$(IMAGE)"

clean:  ## remove the virtual environment and local results
	rm -rf $(VENV) .metaflow multirun outputs
