# The t2v-dist training image.
#
# GPU clusters (the default, CUDA 13.0 + cuDNN on Ubuntu 24.04):
#   docker build -t t2v-dist:cu130 --build-arg TORCH_CUDA_ARCH_LIST="9.0" .
# CPU flavour (what the tests build and run, see container/podman-build.sh):
#   podman build --build-arg FLAVOUR=cpu --build-arg BASE_IMAGE=IMG --build-arg RUNTIME_IMAGE=IMG .
# Versions come from pyproject.toml ([tool.t2v-dist.stack], the `gpu` extra) through container/stack.py;
# the CUDA version in the two image tags below must be the stack's `cuda` (a test checks it).
# Not NGC or pytorch/pytorch images: their own torch builds break the xformers wheels.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder
# cuda: CUDA torch, DeepSpeed's FusedAdam compiled here, xformers. cpu: CPU torch, ops left to run time.
ARG FLAVOUR=cuda
# Where torch comes from: auto = the PyTorch index of the stack's CUDA build (cuda) or its CPU index (cpu);
# empty = pip's own configuration (a local wheel mirror).
ARG TORCH_INDEX_URL=auto
# No GPU is visible during a build, so the architectures to compile for are named: A100, L40S/L4, H100/H200,
# B200 and RTX Blackwell. Fewer architectures build faster.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0;10.0;12.0"
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN case "$FLAVOUR" in cuda|cpu) ;; *) echo "FLAVOUR must be cuda or cpu, got '$FLAVOUR'" >&2; exit 1;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, alone, from the index of its build; every later step is constrained to keep it.
COPY pyproject.toml /opt/t2v/
COPY container/stack.py /opt/t2v/container/
RUN torch=$(python3 /opt/t2v/container/stack.py torch) \
 && index=$TORCH_INDEX_URL \
 && if [ "$index" = auto ]; then \
      if [ "$FLAVOUR" = cuda ]; then index=$(python3 /opt/t2v/container/stack.py torch-index); \
      else index=https://download.pytorch.org/whl/cpu; fi; \
    fi \
 && pip install --upgrade pip setuptools wheel \
 && pip install ${index:+--index-url "$index"} "$torch" \
 && echo "$torch" > /opt/venv/torch-pin.txt

# DeepSpeed builds against the installed torch (no build isolation); FusedAdam is compiled now for the
# named architectures, everything else JIT-compiles on first use (the runtime stage has a compiler).
RUN deepspeed=$(python3 /opt/t2v/container/stack.py deepspeed) \
 && if [ "$FLAVOUR" = cuda ]; then export DS_BUILD_FUSED_ADAM=1 TORCH_CUDA_ARCH_LIST; fi \
 && pip install -c /opt/venv/torch-pin.txt --no-build-isolation "$deepspeed"

# The package's dependencies (with the `gpu` extra, xformers, on cuda). The torch pin makes pip fail rather
# than replace torch; triton comes with torch, never separately. The project itself is installed in the
# runtime stage, so a source change rebuilds neither this venv nor its copy.
RUN extras=$([ "$FLAVOUR" = cuda ] && echo gpu || true) \
 && python3 /opt/t2v/container/stack.py requirements ${extras:+"$extras"} > /tmp/requirements.txt \
 && pip install -c /opt/venv/torch-pin.txt -r /tmp/requirements.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE} AS runtime
ARG FLAVOUR=cuda
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# gcc + python3-dev: Triton compiles a launcher stub and DeepSpeed JIT-builds ops at run time.
# libibverbs1 + ibverbs-providers: without them NCCL silently falls back to TCP sockets on InfiniBand/RoCE.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-dev gcc g++ libibverbs1 ibverbs-providers ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv

# Clusters run images as the submitting user (any UID): HOME and the compiler caches are writable by all;
# on a read-only image (Apptainer SIF) the entry point moves them under $TMPDIR. UID 10001: Ubuntu 24.04
# images already have a user 1000.
RUN useradd --uid 10001 --no-create-home --home-dir /home/t2v --shell /bin/bash t2v \
 && mkdir -p /home/t2v /var/cache/t2v/triton /var/cache/t2v/torch_extensions /workspace \
 && chmod 1777 /home/t2v /var/cache/t2v/triton /var/cache/t2v/torch_extensions /workspace
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/t2v \
    TRITON_CACHE_DIR=/var/cache/t2v/triton \
    TORCH_EXTENSIONS_DIR=/var/cache/t2v/torch_extensions \
    PYTHONUNBUFFERED=1 \
    T2V_FLAVOUR=${FLAVOUR}

# The project, editable at /opt/t2v: launch/ and its configs resolve next to the package.
COPY pyproject.toml README.md /opt/t2v/
COPY t2v_dist /opt/t2v/t2v_dist
COPY ops /opt/t2v/ops
COPY shards /opt/t2v/shards
COPY launch /opt/t2v/launch
COPY container /opt/t2v/container
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/t2v \
 && find /opt/t2v -name __pycache__ -prune -exec rm -rf {} +

# Fail the build on a broken stack: pip check, torch version, DeepSpeed's FusedAdam, xformers' extensions.
# Checks that need a GPU say they are skipped; `podman run --device nvidia.com/gpu=all IMAGE check` runs them.
RUN python /opt/t2v/container/check_stack.py

USER 10001
WORKDIR /workspace
ENTRYPOINT ["/opt/t2v/container/entrypoint.sh"]
CMD ["help"]
