"""Pre-install check: the PyTorchJob CRD of the Kubeflow Training Operator v1.9 is served.

Runs in the controller image as a Helm hook Job. Exit 0 when kubeflow.org/v1 PyTorchJobs are
served; otherwise one line naming the cause on stderr and in the termination message (shown
by `kubectl describe pod`), and exit 1.
"""

import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

CRD = "pytorchjobs.kubeflow.org"
INSTALL = ("install the Kubeflow Training Operator v1.9: kubectl apply --server-side -k "
           "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\"")


def fail(message: str) -> None:
    """Report one line and exit 1."""
    print(message, file=sys.stderr, flush=True)
    try:
        with open("/dev/termination-log", "w", encoding="utf-8") as f:
            f.write(message)
    except OSError:
        pass  # not in a pod (or no termination log): stderr is enough
    sys.exit(1)


def main() -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # run by hand against the current kubeconfig context
    try:
        crd = client.ApiextensionsV1Api().read_custom_resource_definition(CRD)
    except ApiException as err:
        if err.status == 404:
            fail(f"PyTorchJob CRD not found: {INSTALL}")
        if err.status in (401, 403):
            fail(f"cannot read CustomResourceDefinition {CRD} (HTTP {err.status}): the check's "
                 "ClusterRole was not applied; install as a cluster admin or set crdCheck.enabled=false")
        fail(f"cannot check CustomResourceDefinition {CRD}: HTTP {err.status} {err.reason}")
        return
    except HTTPError as err:
        fail(f"cannot reach the Kubernetes API to check {CRD}: {err}")
        return
    served = [v.name for v in crd.spec.versions if v.served]
    if "v1" not in served:
        fail(f"PyTorchJob CRD serves {', '.join(served) or 'no version'}, not kubeflow.org/v1: {INSTALL}")
    print(f"ok: {CRD} serves kubeflow.org/v1")


if __name__ == "__main__":
    main()
