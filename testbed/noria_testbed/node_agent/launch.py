"""How one container of a pod runs here: its argv, environment, working directory, log and
termination-message files, with mount paths rewritten to the pod's local directories."""

from __future__ import annotations

import os
from pathlib import Path

from noria_testbed.node_agent.common import RUN_MARKER_ENV, Json
from noria_testbed.node_agent.images import container_argv, image_config, image_python
from noria_testbed.node_agent.service_account import MOUNT_PATH as SERVICE_ACCOUNT_MOUNT
from noria_testbed.podspec import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    PathRewriter,
    PodSpecError,
    Sources,
    container_env,
    expand,
    python_aware_argv,
)

# Host environment a container may see: enough to run Python and numeric libraries the way this
# machine needs them (e.g. OPENBLAS_CORETYPE), nothing that leaks the test's own configuration.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
INHERITED_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_")
# First on every pod's PYTHONPATH: its sitecustomize turns a bind to 0.0.0.0 into a bind to the
# pod's own address (each pod's network namespace, in miniature; see the module's docstring).
POD_NETWORK_DIR = Path(__file__).resolve().parent / "pod_network"
POD_IP_ENV = "NORIA_TESTBED_POD_IP"


class Launch:
    """How one container runs here: argv, env, cwd, log and termination-message files."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_file: Path, termination_file: Path,
                 rewrite: PathRewriter) -> None:
        self.argv, self.env, self.cwd = argv, env, cwd
        self.log_file, self.termination_file, self.rewrite = log_file, termination_file, rewrite


def launch_for(pod: Json, container: Json, *, sources: Sources, volume_dirs: dict[str, Path], pod_dir: Path,
               pod_ip: str, python: str, run_id: str, credentials: Path | None) -> Launch:
    """The launch of ``container`` (of ``pod``, whose volumes are already in ``volume_dirs``).

    ``credentials``: the directory holding the pod's service-account token files and kubeconfig
    (:mod:`.service_account`), or None for a pod that gets no token."""
    cname = container["name"]
    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_dirs:
            raise PodSpecError(f"container {cname!r} mounts unknown volume {mount['name']!r}")
        local = volume_dirs[mount["name"]]
        if mount.get("subPath"):
            local = local / mount["subPath"]
            if not local.exists():  # the kubelet creates a missing subPath as a directory
                local.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"]] = str(local)
    termination_file = pod_dir / "containers" / cname / "termination-log"
    mounts[container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH] = str(termination_file)
    if credentials is not None:
        mounts.setdefault(SERVICE_ACCOUNT_MOUNT, str(credentials))
    rewrite = PathRewriter(mounts)

    container_vars = dict(sources.service_env) if pod["spec"].get("enableServiceLinks", True) else {}
    container_vars.update(container_env(pod, container, pod_ip, sources))
    # Expand with the container's own (unrewritten) values, then rewrite each string exactly
    # once: a local path may itself start with a mount path (the testbed lives under /tmp).
    image = container.get("image", "")
    python = image_python(image, python)  # an image whose packages live in another venv (IMAGE_INTERPRETERS)
    from_image, own = container_argv(cname, image, container.get("command") or [], container.get("args") or [],
                                     image_config(image) if not container.get("command") else None)
    # The image's ENTRYPOINT/CMD name container paths too, but $(VAR) is the container spec's only.
    words = [rewrite(part) for part in from_image] + [rewrite(expand(part, container_vars)) for part in own]
    env_vars = {k: rewrite(v) for k, v in container_vars.items()}
    if "/tmp" in mounts and "TMPDIR" not in env_vars:
        env_vars["TMPDIR"] = mounts["/tmp"]  # tempfile then uses the pod's /tmp volume
    argv = python_aware_argv(words, [], python)
    cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else pod_dir / "containers" / cname
    cwd.mkdir(parents=True, exist_ok=True)

    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)}
    venv_bin = str(Path(python).parent)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    env.update({"HOSTNAME": pod["metadata"]["name"], "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: run_id})
    if credentials is not None:
        # The pod's own token (Kopf, lightkube and kubectl all read KUBECONFIG); a pod that opts
        # out of a token gets no credentials at all.
        env["KUBECONFIG"] = str(credentials / "kubeconfig")
    env.update(env_vars)
    if pod_ip:
        env[POD_IP_ENV] = pod_ip
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(POD_NETWORK_DIR), env.get("PYTHONPATH", "")) if p)
    return Launch(argv, env, cwd, pod_dir / f"{cname}.log", termination_file, rewrite)
