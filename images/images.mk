# Container images: include from the top Makefile (`include images/images.mk`) or run
#   make -f images/images.mk images-push REGISTRY=registry.example.com/team TAG=0.1.0
# The chart pulls <image.registry>/<name>:<image.tag>: use the same REGISTRY and TAG there.
REGISTRY ?= ghcr.io/sail-pipeline
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker
PLATFORM ?= linux/amd64
WORKLOAD_IMAGES := sail-caption sail-filter sail-train
IMAGES := sail-controller $(WORKLOAD_IMAGES)

.PHONY: images images-push image-sail-controller $(addprefix image-,$(WORKLOAD_IMAGES))

images: $(addprefix image-,$(IMAGES))

image-sail-controller:
	$(DOCKER) build --platform $(PLATFORM) -f images/controller/Dockerfile -t $(REGISTRY)/sail-controller:$(TAG) .

# One Dockerfile, one target per workload image: sail-caption -> --target caption.
$(addprefix image-,$(WORKLOAD_IMAGES)): image-sail-%:
	$(DOCKER) build --platform $(PLATFORM) -f images/workload/Dockerfile --target $* -t $(REGISTRY)/sail-$*:$(TAG) .

images-push: images
	for image in $(IMAGES); do $(DOCKER) push $(REGISTRY)/$$image:$(TAG) || exit 1; done
