"""Pre-install check: the chosen job API is served: PyTorchJobs (kubeflow.org/v1, the Kubeflow
Training Operator v1.9) or, with SAIL_JOB_API=trainjob, TrainJobs (trainer.kubeflow.org/v1alpha1,
Kubeflow Trainer v2).

Runs in the controller image as a Helm hook Job. It asks API discovery (`/apis/<group>/<version>`),
which every authenticated account may read (the default `system:discovery` role), so the install
needs no cluster-scoped grant. Exit 0 when the resource is served; otherwise one line naming the
cause on stderr and in the termination message (shown by `kubectl describe pod`), and exit 1.
"""

import os
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

APIS = {
    "pytorchjob": ("kubeflow.org/v1", "pytorchjobs", "PyTorchJobs",
                   "install the Kubeflow Training Operator v1.9: kubectl apply --server-side -k "
                   "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\""),
    "trainjob": ("trainer.kubeflow.org/v1alpha1", "trainjobs", "TrainJobs",
                 "install Kubeflow Trainer v2.3: kubectl apply --server-side -k "
                 "\"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0\""),
}
GROUP_VERSION, PLURAL, WHAT, INSTALL = APIS.get(os.environ.get("SAIL_JOB_API", "pytorchjob"), APIS["pytorchjob"])


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
    api = client.ApiClient()
    try:
        found = api.call_api(f"/apis/{GROUP_VERSION}", "GET", response_type="object",
                             auth_settings=["BearerToken"], _return_http_data_only=True)
    except ApiException as err:
        if err.status == 404:
            fail(f"{WHAT} are not served ({GROUP_VERSION} is not an API group version of this "
                 f"cluster): {INSTALL}")
        if err.status in (401, 403):
            fail(f"cannot read API discovery /apis/{GROUP_VERSION} (HTTP {err.status}): the hook's service "
                 "account is not authenticated or system:discovery was removed; set crdCheck.enabled=false")
        fail(f"cannot check /apis/{GROUP_VERSION}: HTTP {err.status} {err.reason}")
        return
    except HTTPError as err:
        fail(f"cannot reach the Kubernetes API to check {GROUP_VERSION}: {err}")
        return
    names = [r.get("name") for r in (found or {}).get("resources") or []]
    if PLURAL not in names:
        fail(f"{GROUP_VERSION} is served but without {PLURAL} ({', '.join(map(str, names)) or 'no resources'}):"
             f" {INSTALL}")
    print(f"ok: {GROUP_VERSION} serves {PLURAL}")


if __name__ == "__main__":
    main()
