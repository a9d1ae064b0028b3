"""A fake Kubernetes API server on 127.0.0.1 for the real kubernetes client, the kubeflow SDK and kubectl."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sailk8s.testing.admission import admit, admit_trainjob, load_crd, minimal_crd
from sailk8s.testing.apierrors import ApiError, not_found
from sailk8s.testing.clock import Clock
from sailk8s.testing.faults import FaultPlan
from sailk8s.testing.handler import ApiHandler, RequestRecord
from sailk8s.testing.podlogs import PodLogs
from sailk8s.testing.resources import APIEXTENSIONS, CRD_NAME, Obj, ResourceRegistry, ResourceType
from sailk8s.testing.state import ClusterState

if TYPE_CHECKING:
    from sailk8s.backends.kubernetes.client import Configuration


@dataclass(repr=False)
class FakeKubernetes:
    """The fake API server: `with FakeKubernetes() as kube:` serves on `kube.url`.

    Start it as a context manager; it serves real HTTP from a background thread::

        from sailk8s.testing import FakeKubernetes, FakeTrainingOperator

        with FakeKubernetes() as kube:                      # random free port, namespace "default"
            kube.kubeconfig(tmp_path / "kubeconfig")        # for kubectl / config.load_kube_config
            api = kubernetes.client.ApiClient(kube.client_configuration())
            with FakeTrainingOperator(kube, mode="simulate", duration=2.0):
                ...                                         # create PyTorchJobs, watch them finish
            kube.request_count(method="GET")                # every request is logged in kube.requests

    Served: discovery (/api, /apis, aggregated discovery, /version), CRUD + watch for namespaces,
    pods (+ /log, /status), events, services, configmaps, secrets, nodes, leases
    (coordination.k8s.io/v1), pytorchjobs (kubeflow.org/v1, + /status) and Kubeflow Trainer v2's
    trainjobs (+ /status), trainingruntimes and clustertrainingruntimes (trainer.kubeflow.org/
    v1alpha1; `kube.install_runtime(obj)`; `kube.registry.trainer_installed = False` hides them);
    label and field selectors; limit/continue; server-set uid, resourceVersion, creationTimestamp, generation;
    409 AlreadyExists/Conflict; watch from a resourceVersion with 410 Gone once compacted;
    Table output for `kubectl get`; DeleteOptions propagationPolicy with owner-reference GC.

    Faults (see `sailk8s.testing.faults.FaultPlan`), armed on `kube.faults`::

        kube.faults.fail(503, times=3, path="pytorchjobs")     # a 5xx burst (also 403, 500...)
        kube.faults.throttle(times=2)                          # 429 with Retry-After
        kube.faults.conflict_on_create(path="pytorchjobs")     # 409 AlreadyExists on POST
        kube.faults.drop_watch(after_events=1)                 # cut the next watch stream
        kube.faults.expire_watch()                             # 410 Gone ERROR on the next watch
        kube.logs.cut_streams(after_lines=2)                   # cut the next pod log follow stream
        kube.compact()                                         # forget history: old RVs get 410
        kube.close_watches()                                   # end every open watch now
        kube.crd_installed = False                             # kubeflow.org/v1 answers 404
                                                               # (or FakeKubernetes(install_crd=False))
    PyTorchJobs pass the Training Operator's webhook rules (admission=True) and, with
    `crd_file=<kubeflow.org_pytorchjobs.yaml>`, the CRD's openAPIV3Schema; TrainJobs pass the
    trainer's webhook rules against the runtime they name, which must exist; violations are 422.
    Unexpected server exceptions answer 500 and are kept in `kube.errors`.
    Pod-level faults (eviction, OOMKilled, node loss...) live on `FakeTrainingOperator`.
    """

    host: str = "127.0.0.1"
    port: int = 0
    namespaces: tuple[str, ...] = ("default",)
    token: str | None = None  # when set, requests need `Authorization: Bearer <token>`
    clock: Clock = field(default_factory=Clock)
    history: int = 10000
    watch_timeout: float = 1800.0  # real servers end watches after 30-60 minutes
    server_version: str = "1.34"
    install_crd: bool = True  # False: a cluster without the Training Operator (kubeflow.org/v1 is 404)
    crd_file: str | Path | None = None  # the real CRD YAML: PyTorchJobs are checked against its schema
    admission: bool = True  # the Training Operator's (and the Trainer's) validating webhook rules
    trainer_crds: str | Path | None = None  # the Trainer v2 CRD folder: TrainJobs checked against its schema
    registry: ResourceRegistry = field(default_factory=ResourceRegistry)
    faults: FaultPlan = field(default_factory=FaultPlan)
    logs: PodLogs = field(default_factory=PodLogs)

    def __post_init__(self) -> None:
        self.state = ClusterState(self.clock, self.history)
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # unexpected server-side exceptions (answered 500), for tests
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._watch_stops: set[threading.Event] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.state.subscribe(self._forget_pod_logs)
        self.state.subscribe(self._track_crd)
        self.crd = load_crd(self.crd_file) if self.crd_file else None
        self.registry.crd_installed = False
        for namespace in ("kube-system", *self.namespaces):
            if self.state.find(self.type("namespaces"), None, namespace) is None:
                self.state.create(self.type("namespaces"), None, {"metadata": {"name": namespace}})
        self.crd_installed = self.install_crd

    def __repr__(self) -> str:
        return f"FakeKubernetes(url={self.url!r}, objects_rv={self.state.resource_version})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeKubernetes:
        """Bind the port and serve from a daemon thread."""
        handler = type("BoundHandler", (ApiHandler,), {"kube": self})
        server_class = type("FakeKubeHTTPServer", (ThreadingHTTPServer,), {"request_queue_size": 128})
        self._httpd = server_class((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fake-kube-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end watches and log streams, and close every open connection."""
        self.state.stopped.set()
        self.logs.stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://{self.host}:{self.port}"

    # -- client helpers -----------------------------------------------------------------------
    def kubeconfig(self, path: str | Path, namespace: str = "default", context: str = "fake") -> Path:
        """Write a kubeconfig for kubectl and `kubernetes.config.load_kube_config`; returns the path."""
        user: Obj = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
            ],
            "current-context": context,
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config, indent=2))  # JSON is YAML; no dependency needed
        return target

    def client_configuration(self) -> Configuration:
        """A `kubernetes.client.Configuration` pointing at this server (for ApiClient/TrainingClient)."""
        from sailk8s.backends.kubernetes.client import configuration_for

        return configuration_for(self.url, self.token)

    # -- state helpers ------------------------------------------------------------------------
    def type(self, plural: str, group: str = "") -> ResourceType:
        """The ResourceType for a plural (core group unless `group` is given), even if not served."""
        for rtype in self.registry.types:
            if rtype.plural == plural and rtype.group == group:
                return rtype
        raise KeyError(f"unknown resource {plural}.{group}")

    @property
    def crd_installed(self) -> bool:
        """Whether kubeflow.org/v1 PyTorchJobs are served (False: 404, like a cluster without it)."""
        return self.registry.crd_installed

    @crd_installed.setter
    def crd_installed(self, value: bool) -> None:
        """Install or remove the PyTorchJob CRD object (removing it deletes every PyTorchJob)."""
        crd_type = self.type("customresourcedefinitions", APIEXTENSIONS)
        present = self.state.find(crd_type, None, CRD_NAME) is not None
        if value and not present:
            self.state.create(crd_type, None, self.crd or minimal_crd())
        elif not value and present:
            self.state.delete(crd_type, None, CRD_NAME)

    def _track_crd(self, event: Any) -> None:
        """Serve kubeflow.org/v1 exactly while the CRD object exists, as a real server does."""
        if event.rtype.plural != "customresourcedefinitions" or event.obj["metadata"]["name"] != CRD_NAME:
            return
        installed = event.type != "DELETED"
        if not installed:
            jobs, _ = self.state.list(self.type("pytorchjobs", "kubeflow.org"))
            for job in jobs:
                with contextlib.suppress(ApiError):
                    self.state.delete(
                        self.type("pytorchjobs", "kubeflow.org"),
                        job["metadata"]["namespace"],
                        job["metadata"]["name"],
                    )
        self.registry.crd_installed = installed

    def admit(self, rtype: ResourceType, obj: Obj) -> None:
        """Run PyTorchJob admission (CRD schema, webhook) on an object about to be stored."""
        if rtype.kind == "PyTorchJob":
            admit(obj, self.crd, self.admission)
        elif rtype.kind == "TrainJob":
            ns = (obj.get("metadata") or {}).get("namespace")
            ref = (obj.get("spec") or {}).get("runtimeRef") or {}
            cluster = ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime"
            plural = "clustertrainingruntimes" if cluster else "trainingruntimes"
            runtime = self.state.find(self.type(plural, "trainer.kubeflow.org"), None if cluster else ns,
                                      str(ref.get("name", "")))
            admit_trainjob(obj, runtime, self.admission, self.trainer_crds)

    def install_runtime(self, runtime: Obj) -> Obj:
        """Create a (Cluster)TrainingRuntime, as the chart or a platform team would."""
        cluster = runtime.get("kind") == "ClusterTrainingRuntime"
        plural = "clustertrainingruntimes" if cluster else "trainingruntimes"
        ns = None if cluster else runtime["metadata"].get("namespace", "default")
        return self.state.create(self.type(plural, "trainer.kubeflow.org"), ns, runtime)

    def compact(self) -> None:
        """Forget the watch history: watches from older resourceVersions get 410 Gone."""
        self.state.compact()

    def close_watches(self) -> None:
        """End every open watch stream now (cleanly, as an apiserver restart would)."""
        with self._lock:
            stops = list(self._watch_stops)
        for stop in stops:
            stop.set()

    def open_watches(self) -> int:
        """How many watch streams are open now."""
        with self._lock:
            return len(self._watch_stops)

    def version_info(self) -> Obj:
        """GET /version."""
        major, minor = self.server_version.split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{self.server_version}.0-fake",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    # -- request log --------------------------------------------------------------------------
    def request_count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        watch: bool | None = None,
        user_agent_contains: str | None = None,
    ) -> int:
        """How many logged requests match all the given filters."""
        with self._lock:
            records = list(self.requests)
        return sum(
            1
            for r in records
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (watch is None or r.watch == watch)
            and (user_agent_contains is None or user_agent_contains in r.user_agent)
        )

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self.requests.clear()

    # -- internals used by the handler --------------------------------------------------------
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _check_auth(self, header: str | None) -> None:
        if self.token and header != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _open_watch(self) -> threading.Event:
        stop = threading.Event()
        with self._lock:
            self._watch_stops.add(stop)
        return stop

    def _close_watch(self, stop: threading.Event) -> None:
        with self._lock:
            self._watch_stops.discard(stop)

    def _forget_pod_logs(self, event: Any) -> None:
        if event.type == "DELETED" and event.rtype.kind == "Pod":
            meta = event.obj["metadata"]
            self.logs.remove_pod(meta.get("namespace", ""), meta["name"])


__all__ = ["ApiError", "FakeKubernetes", "RequestRecord", "not_found"]
