"""Noria's node agent: one Kubernetes Node whose pods run as local processes.

It takes the place of a kubelet (and of kwok) on a machine without a container runtime, so
that the trainer's Jobs and the model server's Deployments run the repo's real code:

* registers the Node ``noria-local`` (Ready; cpu 64, memory 256Gi, pods 500), renews its Lease
  in ``kube-node-lease`` and refreshes the Ready condition's heartbeat;
* watches the pods bound to it and runs each container as a local process in its own process
  group, combining ``command``/``args`` with the image's ENTRYPOINT/CMD as the kubelet does
  (``command`` replaces ENTRYPOINT, ``args`` replace CMD; see :mod:`.images`: the entrypoints of
  Noria's images come from the repository's Dockerfiles). ``python``/``python3`` as the first word
  becomes this interpreter (``sys.executable``), so ``python -m noria_trainer ...`` runs the repo
  code, and the venv's ``bin`` is first on PATH. Env: values with ``$(VAR)`` expansion, fieldRef
  (name, namespace, uid, labels, annotations, status.podIP, ...), configMapKeyRef, secretKeyRef,
  envFrom;
* gives a pod that does not opt out (``automountServiceAccountToken: false`` on the pod or its
  ServiceAccount) a token of its own ServiceAccount from the TokenRequest API, bound to the pod and
  renewed at 80% of its hour, as files and as the kubeconfig ``KUBECONFIG`` names
  (:mod:`.service_account`): a process acts with its RBAC, never the agent's credentials;
* lets every pod listen on the wildcard address as if it had its own network namespace: Python
  processes bind 0.0.0.0 as the pod's address (``pod_network/sitecustomize.py``), so two replicas
  of one Deployment can use the same port;
* gives each pod its own loopback address from ``--pod-cidr`` (a block of 127/8, lowest free
  first, reused after the pod is gone), written as ``status.podIP``; processes must bind to it
  (e.g. via a fieldRef env var);
* materialises volumes as local directories: configMap (kept up to date from a watch), secret,
  emptyDir, downwardAPI, hostPath, persistentVolumeClaim (claim ``noria-store`` is the testbed's
  store dir, other claims get a directory under the agent's root; the agent also creates a
  pre-bound hostPath PersistentVolume for every pending claim so the scheduler can place pods);
  then applies the path rewriting rule of :mod:`noria_testbed.podspec` to command, args, env and
  workingDir;
* writes pod status as the kubelet does: Pending → Running (started, ready from the
  readinessProbe: httpGet, tcpSocket or exec; no probe means ready once started; a failing
  livenessProbe restarts the container) → Succeeded or
  Failed with exit code and ``terminated.message`` from the (rewritten) termination-message file,
  FallbackToLogsOnError honoured; restartPolicy Always/OnFailure restarts with exponential backoff;
* on deletion sends SIGTERM to the process group, SIGKILL after terminationGracePeriodSeconds
  (capped at GRACE_CAP seconds), then removes the pod (gracePeriodSeconds=0);
* serves Prometheus ``http_sd_configs`` targets at ``/sd`` (Debian's Prometheus has no
  kubernetes_sd), and ``/healthz``.

Not implemented: startup probes, resource limits, ``kubectl logs``/``exec`` (container
logs are files under ``<root>/pods/<namespace>/<pod>/<container>.log``), EndpointSlices (the
apiserver refuses loopback endpoint addresses).

Run it as ``python -m noria_testbed.node_agent --kubeconfig ... --root ... --store-dir ...``.

Where each part lives:

* :mod:`.agent` — :class:`NodeAgent`: the informers (pods, ConfigMaps, claims, Services), Events;
* :mod:`.pod` — :class:`PodWorker`: one pod's life, init containers, status writes, deletion;
* :mod:`.container` — :class:`ContainerRunner`: one process, restarts with back-off, stop;
* :mod:`.probes` — one readiness/liveness probe (httpGet, tcpSocket, exec);
* :mod:`.launch` — a container spec turned into argv, env, cwd and log files;
* :mod:`.images` — the images' ENTRYPOINT/CMD from the Dockerfiles, combined as the kubelet does;
* :mod:`.service_account` — a pod's service-account token, its files and kubeconfig;
* :mod:`.volumes` — volumes as local directories, PersistentVolumes for claims;
* :mod:`.addresses` — pod addresses from the loopback block;
* :mod:`.service_proxy` — Services: the small kube-proxy and service-link env vars;
* :mod:`.node` — the Node object, its Lease and heartbeat;
* :mod:`.endpoints` — ``/sd``, ``/healthz``, ``/pods`` and the kubelet's ``/containerLogs``;
* :mod:`.cli` — the command line.
"""

from noria_testbed.node_agent.addresses import PodAddresses
from noria_testbed.node_agent.agent import NodeAgent
from noria_testbed.node_agent.cli import main
from noria_testbed.node_agent.common import GRACE_CAP, HOST_IP, NODE_NAME, RUN_MARKER_ENV, STORE_CLAIM
from noria_testbed.node_agent.container import ContainerRunner
from noria_testbed.node_agent.launch import Launch
from noria_testbed.node_agent.pod import PodWorker
from noria_testbed.node_agent.service_proxy import ServiceProxy, resolve_port, service_links
from noria_testbed.node_agent.volumes import referenced_secrets, write_projection

__all__ = [
    "GRACE_CAP", "HOST_IP", "NODE_NAME", "RUN_MARKER_ENV", "STORE_CLAIM", "ContainerRunner", "Launch", "NodeAgent",
    "PodAddresses", "PodWorker", "ServiceProxy", "main", "referenced_secrets", "resolve_port", "service_links",
    "write_projection",
]
