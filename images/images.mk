# Container images: include from the top Makefile (`include images/images.mk`) or run
#   make -f images/images.mk images-push REGISTRY=registry.example.com/team TAG=0.1.0
# The chart pulls <image.registry>/<name>:<image.tag>: use the same REGISTRY and TAG there.
REGISTRY ?= ghcr.io/sail-pipeline
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker
PLATFORM ?= linux/amd64
# Extra `build` arguments, e.g. --build-arg PYTORCH_IMAGE=... (CI's stand-in bases: images-test).
BUILD_ARGS ?=
WORKLOAD_IMAGES := sail-caption sail-filter sail-train
IMAGES := sail-controller $(WORKLOAD_IMAGES)

.PHONY: images images-push images-test images-ci-setup images-ci-bases image-sail-controller $(addprefix image-,$(WORKLOAD_IMAGES))

images: $(addprefix image-,$(IMAGES))

image-sail-controller:
	$(DOCKER) build --platform $(PLATFORM) $(BUILD_ARGS) -f images/controller/Dockerfile -t $(REGISTRY)/sail-controller:$(TAG) .

# One Dockerfile, one target per workload image: sail-caption -> --target caption.
$(addprefix image-,$(WORKLOAD_IMAGES)): image-sail-%:
	$(DOCKER) build --platform $(PLATFORM) $(BUILD_ARGS) -f images/workload/Dockerfile --target $* -t $(REGISTRY)/sail-$*:$(TAG) .

images-push: images
	for image in $(IMAGES); do $(DOCKER) push $(REGISTRY)/$$image:$(TAG) || exit 1; done

# CI (images/ci/): podman on this host (installed and configured if missing), registry-free
# stand-ins for the bases (Debian from mmdebstrap; CPU torch from pip's local wheel folder), every
# image built from the unmodified Dockerfiles with those bases as build arguments, then checked
# (uid 10001, read-only root filesystem, imports, CMD, no torch in the controller). Root only.
CI_BASES := localhost/sail-ci
CI_REGISTRY := localhost/sail
CI_TAG := ci
CI_TORCH := $(shell sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements/constraints.txt)
# WITH_VLLM=0: vLLM's CUDA build (hundreds of MB, twice) cannot run on CI's CPU stand-ins; the
# CPU vLLM is tested in its own venv (make vllm-venv), the GPU images keep the default (1).
CI_BUILD_ARGS := --build-arg PYTHON_IMAGE=$(CI_BASES)/python:3.11-slim --build-arg WITH_VLLM=0 \
	--build-arg PYTORCH_IMAGE=$(CI_BASES)/pytorch:$(CI_TORCH)-cpu

images-ci-setup:
	images/ci/podman-setup.sh

images-ci-bases: images-ci-setup
	images/ci/bases.sh $(CI_BASES)

images-test: images-ci-bases
	$(MAKE) -f images/images.mk images DOCKER=podman REGISTRY=$(CI_REGISTRY) TAG=$(CI_TAG) \
		BUILD_ARGS="$(CI_BUILD_ARGS)"
	python3 images/ci/check_images.py --registry $(CI_REGISTRY) --tag $(CI_TAG)
