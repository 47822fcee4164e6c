# HMS Mesh. `make demo` and `make test` each work alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
# google/api/*.proto come from the installed googleapis-common-protos (no Buf Schema Registry here).
GOOGLEAPIS = $(shell $(PY) -c 'import google.api.annotations_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])')
GRPC_PROTOS = $(shell $(PY) -c 'import grpc_tools, pathlib; print(pathlib.Path(grpc_tools.__file__).parent / "_proto")')

.PHONY: install proto lint breaking test test-unit test-integration up demo bench chaos multihost clean

install: $(STAMP) $(GEN_STAMP)

# Reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Editable: the installed names (hms_gateway -> gateway/, ...) map to the folders here.
	$(PY) -m pip install --quiet -e '.[dev]'
	# The generated package lives in gen/; a .pth file puts it on the venv's path.
	echo "$(CURDIR)/gen" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/hms_mesh_gen.pth"
	touch $(STAMP)

proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(STAMP)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos -I$(GOOGLEAPIS) -I$(GRPC_PROTOS) \
		--python_out=gen --pyi_out=gen --grpc_python_out=gen \
		--descriptor_set_out=gen/hms.binpb --include_imports --include_source_info $(PROTOS)
	touch $(GEN_STAMP)

# buf runs offline: google/api/*.proto are copied into a second, lint-exempt module.
.build/buf-deps/google/api/annotations.proto: $(STAMP)
	mkdir -p .build/buf-deps/google/api
	cp $(GOOGLEAPIS)/google/api/*.proto .build/buf-deps/google/api/

# mypy cannot follow the editable install's import hook from hms_gateway to gateway/: it reads
# the package through a symlink of that name.
.build/typing/hms_gateway:
	mkdir -p .build/typing
	ln -sfn $(CURDIR)/gateway .build/typing/hms_gateway

# mypy --strict over the library and the gateway ([tool.mypy] in pyproject.toml); gen/ holds
# the generated hms.* modules and their .pyi stubs. Then buf lint and `mesh manifest check`.
lint: install .build/buf-deps/google/api/annotations.proto .build/typing/hms_gateway
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=.build/typing:gen $(BIN)/mypy -p mesh -p hms_gateway
	$(BIN)/buf lint
	# The manifests (services/*/service.toml) against the contracts (gen/, made by install)
	# and the code: every disagreement, one per line (docs/manifests.md).
	$(BIN)/mesh manifest check

# Compares the working tree's contracts with those on main. main's tree has no copy of the
# google/api protos (they are not in git), so it is built as an image with them added.
BREAKING_BASE ?= main
breaking: install .build/buf-deps/google/api/annotations.proto
	rm -rf .build/against && mkdir -p .build/against/.build
	git archive $(BREAKING_BASE) buf.yaml protos | tar -x -C .build/against
	cp -r .build/buf-deps .build/against/.build/
	$(BIN)/buf build .build/against -o .build/against.binpb
	$(BIN)/buf build -o .build/current.binpb
	# Image against image, rules from buf.yaml (a workspace input compared with an image
	# reported nothing in buf 1.75, even for a changed field type).
	$(BIN)/buf breaking .build/current.binpb --against .build/against.binpb --config buf.yaml

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: install
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

up: install
	$(BIN)/mesh up

demo: install
	$(PY) -m hms_tools.demo

bench: install
	$(PY) -m bench

# Reliability under fire (docs/reliability.md); `make chaos SOAK=600` adds a ten-minute soak.
SOAK ?= 0
chaos: install
	$(PY) -m chaos --soak $(SOAK)

# Three hosts in network namespaces, one cut off under load (docs/reliability.md, "Several
# hosts"); needs root (network namespaces) and iproute2.
multihost: install
	$(PY) -m chaos.multihost

clean:
	rm -rf $(VENV) gen .build .mesh
