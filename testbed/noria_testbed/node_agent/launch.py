"""How one container of a pod runs here: its argv, environment, working directory, log and
termination-message files, with mount paths rewritten to the pod's local directories."""

from __future__ import annotations

import os
from pathlib import Path

from noria_testbed.node_agent.common import RUN_MARKER_ENV, Json
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


class Launch:
    """How one container runs here: argv, env, cwd, log and termination-message files."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_file: Path, termination_file: Path,
                 rewrite: PathRewriter) -> None:
        self.argv, self.env, self.cwd = argv, env, cwd
        self.log_file, self.termination_file, self.rewrite = log_file, termination_file, rewrite


def launch_for(pod: Json, container: Json, *, sources: Sources, volume_dirs: dict[str, Path], pod_dir: Path,
               pod_ip: str, python: str, run_id: str, kubeconfig: Path | None) -> Launch:
    """The launch of ``container`` (of ``pod``, whose volumes are already in ``volume_dirs``)."""
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
    rewrite = PathRewriter(mounts)

    container_vars = dict(sources.service_env) if pod["spec"].get("enableServiceLinks", True) else {}
    container_vars.update(container_env(pod, container, pod_ip, sources))
    # Expand with the container's own (unrewritten) values, then rewrite each string exactly
    # once: a local path may itself start with a mount path (the testbed lives under /tmp).
    command = [rewrite(expand(part, container_vars)) for part in container.get("command") or []]
    args = [rewrite(expand(part, container_vars)) for part in container.get("args") or []]
    env_vars = {k: rewrite(v) for k, v in container_vars.items()}
    if "/tmp" in mounts and "TMPDIR" not in env_vars:
        env_vars["TMPDIR"] = mounts["/tmp"]  # tempfile then uses the pod's /tmp volume
    argv = python_aware_argv(command, args, python)
    cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else pod_dir / "containers" / cname
    cwd.mkdir(parents=True, exist_ok=True)

    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)}
    venv_bin = str(Path(python).parent)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    env.update({"HOSTNAME": pod["metadata"]["name"], "PYTHONUNBUFFERED": "1", RUN_MARKER_ENV: run_id})
    if pod["spec"].get("automountServiceAccountToken", True) is not False and kubeconfig:
        # Stand-in for a mounted service-account token: clients that honour KUBECONFIG (lightkube,
        # kubectl) reach the API server; pods that opt out of a token get no credentials at all.
        env["KUBECONFIG"] = str(kubeconfig)
    env.update(env_vars)
    return Launch(argv, env, cwd, pod_dir / f"{cname}.log", termination_file, rewrite)
