"""``kubectl noria`` (the ``kubectl-noria`` executable, or ``python -m noria.cli``): read and steer
TrainingPipelines, ModelVersions and Rollouts as ``kubectl argo rollouts`` does for Argo's Rollouts.

This module parses the command line, gathers the objects (``cluster``), hands them to the pure
views and actions, and carries out the one write an action returns. kubectl runs a plugin with the
arguments after its name, so the kubectl-like flags (--kubeconfig, --context, -n, -A, -o) are the
plugin's own and are accepted before or after the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from noria.api import resources
from noria.cli import actions
from noria.cli.actions import Refused
from noria.cli.style import Style, wants_colour

PROG = "kubectl noria"
WATCH_INTERVAL = 2.0  # seconds between two refreshes of `get -w`
CONFLICT_RETRIES = 3

# What a person types -> the kind: what kubectl accepts for each CRD (its singular, plural, short
# names tp/mv/mro and plural.group, from the registry the CRDs are generated from) plus the CLI's words.
KIND_WORDS = {
    **{word: kind.kind for kind in resources.KINDS
       for word in (kind.singular, kind.plural, *kind.short_names, kind.crd_name)},
    **dict.fromkeys(("pipeline", "pipelines"), "TrainingPipeline"),
    **dict.fromkeys(("version", "versions"), "ModelVersion"),
}
WORD = {"TrainingPipeline": "pipeline", "ModelVersion": "version", "Rollout": "rollout"}


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """kubectl's flags; on the subcommands they default to SUPPRESS so they never undo the top level's."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=default, help="path of the kubeconfig file (default: $KUBECONFIG, "
                        "else ~/.kube/config)")
    parser.add_argument("--context", default=default, help="kubeconfig context (default: the current context)")
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")


def _reads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("json", "yaml"), default=None,
                        help="print the object(s) as JSON or YAML instead of the tree")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Read and steer Noria's TrainingPipelines, ModelVersions and Rollouts.",
        epilog="Each write command prints what the operator will do; it refuses, changing nothing, when the "
               "object's state makes the command pointless (e.g. promote with no canary).")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = sub.add_parser("get", help="a pipeline, version or rollout as a tree; without NAME, a list")
    get.add_argument("kind", metavar="pipeline|version|rollout")
    get.add_argument("name", nargs="?", help="object name; omit for a list")
    get.add_argument("-w", "--watch", action="store_true", help="refresh in place until interrupted")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list across every namespace")
    _reads(get)
    _common(get, top=False)

    history = sub.add_parser("history", help="runs, versions and stage history: what served when, and why")
    history.add_argument("kind", metavar="pipeline|version")
    history.add_argument("name")
    _reads(history)
    _common(history, top=False)

    for name, help_text in (
            ("promote", "a Rollout's canary past the current step (--full: every remaining step)"),
            ("abort", "a Rollout's canary: all traffic back to the stable version"),
            ("retry", "bring back the version a Rollout aborted"),
            ("pause", "hold a Rollout at its step (spec.paused)"),
            ("resume", "carry on a paused Rollout"),
            ("approve", "a Candidate or Registered ModelVersion, in your own name"),
            ("reject", "a Candidate or Registered ModelVersion, in your own name"),
            ("retrain", "one more training run of a TrainingPipeline")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("name", metavar="NAME")
        if name == "promote":
            cmd.add_argument("--full", action="store_true", help="skip every remaining step: promote now")
        _common(cmd, top=False)
    return parser


# --- what each write command acts on ---------------------------------------------------------------
WRITE_KIND = {"promote": "Rollout", "abort": "Rollout", "retry": "Rollout", "pause": "Rollout", "resume": "Rollout",
              "approve": "ModelVersion", "reject": "ModelVersion", "retrain": "TrainingPipeline"}


def kind_of(word: str) -> str:
    kind = KIND_WORDS.get(word.lower())
    if kind is None:
        raise Refused(f"unknown kind {word!r}: use pipeline (tp), version (mv) or rollout (mro)")
    return kind


def split_name(command: str, text: str) -> str:
    """``churn`` or ``rollout/churn``; a kind prefix must be the kind the command acts on."""
    if "/" not in text:
        return text
    word, name = text.split("/", 1)
    if kind_of(word) != WRITE_KIND[command]:
        raise Refused(f"{command} acts on {WRITE_KIND[command]}s, not {kind_of(word)}s")
    return name


def _find(cluster: Any, command: str, name: str) -> dict[str, Any]:
    """The object the command acts on; if it is missing but another Noria kind has that name, say so."""
    kind = WRITE_KIND[command]
    obj = cluster.get(kind, name)
    if obj is not None:
        return obj
    for other in ("Rollout", "ModelVersion", "TrainingPipeline"):
        if other != kind and cluster.get(other, name) is not None:
            raise Refused(f"{name} is a {other}: {command} acts on {kind}s "
                          f"(`kubectl noria get {WORD[kind]}` lists them)")
    return cluster.require(kind, name)


def decide(command: str, obj: dict[str, Any], cluster: Any, args: argparse.Namespace, now: dt.datetime,
           caller: Callable[[], str | None]) -> actions.Action:
    """The action of ``command`` on ``obj``; ``caller()`` is who the API server says is asking."""
    if command == "promote":
        return actions.promote(obj, full=args.full)
    if command == "abort":
        return actions.abort(obj)
    if command == "retry":
        mvs = {mv["metadata"]["name"]: mv for mv in cluster.list("ModelVersion")}
        return actions.retry(obj, mvs)
    if command == "pause":
        return actions.pause(obj)
    if command == "resume":
        return actions.resume(obj)
    if command in ("approve", "reject"):
        user = caller()
        if not user:
            raise Refused("the API server did not say who you are, and an approval must carry your own name")
        return actions.approve(obj, user) if command == "approve" else actions.reject(obj, user)
    return actions.retrain(obj, actions.retrain_value(caller(), now), now)


def run_write(cluster: Any, args: argparse.Namespace, out: Callable[[str], None],
              now: Callable[[], dt.datetime]) -> int:
    """Read, decide, write with the read's resourceVersion; on a conflict (the operator wrote in
    between) read and decide again, so the write always follows from the object as it is."""
    from noria.cli.cluster import CliError, Conflict

    name = split_name(args.command, args.name)
    asked: dict[str, str | None] = {}

    def caller() -> str | None:
        """Asked once per command (a SelfSubjectReview). For a retrain, who asked is a courtesy in the
        value: a server that cannot say leaves it out; an approval cannot go without it."""
        if "user" not in asked:
            try:
                asked["user"] = cluster.whoami()
            except CliError:
                if args.command in ("approve", "reject"):
                    raise
                asked["user"] = None
        return asked["user"]

    for _ in range(CONFLICT_RETRIES):
        obj = _find(cluster, args.command, name)
        action = decide(args.command, obj, cluster, args, now(), caller)
        if action.patch is None:
            out(action.message)
            return 0
        try:
            cluster.merge_patch(WRITE_KIND[args.command], name, action.patch,
                                resource_version=obj["metadata"].get("resourceVersion"))
        except Conflict:
            continue
        out(action.message)
        return 0
    raise CliError(f"{name} kept changing while this command ran ({CONFLICT_RETRIES} tries): run it again")


# --- reads ----------------------------------------------------------------------------------------
def _printable(objs: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(objs, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(objs, sort_keys=False)


def _as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _columns(header: list[str], rows: list[list[str]], with_namespace: bool) -> str:
    if not with_namespace:
        header, rows = header[1:], [r[1:] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) + 3 for i in range(len(header))]
    return "\n".join("".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows]) + "\n"


def pipeline_versions(cluster: Any, pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    name = pipeline["metadata"]["name"]
    return [mv for mv in cluster.list("ModelVersion") if (mv.get("spec") or {}).get("pipeline") == name]


def read_once(cluster: Any, args: argparse.Namespace, now: dt.datetime, style: Style) -> str:
    from noria.cli import pipeline_view, rollout_view
    from noria.cli.cluster import CliError
    from noria.contracts import LABEL_ROLLOUT

    kind = kind_of(args.kind)
    if args.command == "history":
        if kind == "Rollout":
            raise Refused("history reads a pipeline or a version: a Rollout's history is its versions' "
                          "(`kubectl noria history pipeline <its pipeline>`)")
        obj = cluster.require(kind, args.name)
        if kind == "TrainingPipeline":
            mvs = pipeline_versions(cluster, obj)
            if args.output:
                return _printable({"runs": (obj.get("status") or {}).get("lastRuns") or [],
                                   "versions": [{"name": mv["metadata"]["name"], **(mv.get("status") or {})}
                                                for mv in mvs]}, args.output)
            return pipeline_view.render_pipeline_history(obj, mvs, now, style)
        if args.output:
            return _printable((obj.get("status") or {}).get("history") or [], args.output)
        return pipeline_view.render_version_history(obj, now, style)

    if not args.name:
        items = cluster.list(kind, all_namespaces=args.all_namespaces)
        if args.output:
            return _printable(_as_list(items), args.output)
        if not items:
            where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
            return f"No {kind}s found in {where}.\n"
        if kind == "Rollout":
            header = ["NAMESPACE", "NAME", "STATUS", "STABLE", "CANARY", "STEP", "PAUSED"]
            rows = [rollout_view.rollout_row(o) for o in items]
        elif kind == "TrainingPipeline":
            header = ["NAMESPACE", "NAME", "STATUS", "CHAMPION", "LATEST", "RUN"]
            rows = [pipeline_view.pipeline_row(o) for o in items]
        else:
            header = ["NAMESPACE", "NAME", "STAGE", "TRAFFIC", "METRIC"]
            rows = [pipeline_view.version_row(o) for o in items]
        return _columns(header, rows, args.all_namespaces)
    if args.all_namespaces:
        raise Refused("-A lists objects of every namespace; with a NAME, give its namespace with -n")
    obj = cluster.require(kind, args.name)
    if args.output:
        return _printable(obj, args.output)
    if kind == "Rollout":
        labels = {LABEL_ROLLOUT: args.name}
        by_name = {mv["metadata"]["name"]: mv for mv in cluster.list("ModelVersion")}
        try:  # someone who may read Rollouts but not Deployments or pods still gets the rest
            deployments, pods, note = cluster.list("Deployment", labels=labels), cluster.list("Pod", labels=labels), ""
        except CliError as exc:
            deployments, pods, note = [], [], f"(Deployments and pods not shown: {exc})\n"
        return rollout_view.render_rollout(obj, by_name, deployments, pods, now, style) + note
    if kind == "TrainingPipeline":
        return pipeline_view.render_pipeline(obj, pipeline_versions(cluster, obj), now, style)
    return pipeline_view.render_version(obj, now, style)


def watch(read: Callable[[], str], out: Callable[[str], None], is_tty: bool, interval: float = WATCH_INTERVAL,
          sleep: Callable[[float], None] = time.sleep, frames: int | None = None) -> None:
    """Print ``read()`` every ``interval`` s: in place on a terminal (clear, redraw), else as frames
    separated by a blank line (a log keeps the history). Until Ctrl-C (or ``frames``, for tests)."""
    shown = 0
    previous = None
    while frames is None or shown < frames:
        text = read()
        if is_tty:
            out("\033[H\033[2J" + text)
        elif text != previous:
            out(("\n" if previous is not None else "") + text)
        previous = text
        shown += 1
        if frames is None or shown < frames:
            sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    is_tty = sys.stdout.isatty()
    style = Style(colour=wants_colour(is_tty, os.environ))

    def out(text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    try:
        from noria.cli.cluster import CliError, Cluster, load_target
    except ImportError as exc:  # the core install has no Kubernetes client
        print(f"{PROG}: needs the Kubernetes client: pip install 'noria[cli]' ({exc})", file=sys.stderr)
        return 1
    try:
        cluster = Cluster(load_target(args.kubeconfig, args.context, args.namespace))
        if args.command in ("get", "history"):
            if getattr(args, "watch", False):
                if args.output:
                    raise Refused("-w redraws the tree; -o prints an object once: use one of them")
                watch(lambda: read_once(cluster, args, now(), style), out, is_tty)
            else:
                out(read_once(cluster, args, now(), style))
            return 0
        return run_write(cluster, args, out, now)
    except (Refused, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
