"""Whether a ModelVersion's files lie where its namespace may read them (issue #10, "artifacts are scoped").

Threat: a ModelVersion is a pointer that a person may write (importing a model) and that Noria then
loads into a server running in the ModelVersion's namespace. Unscoped, a ModelVersion in ``ml2``
could serve ``ml``'s model (read across tenants), or point at ``file:///etc/passwd`` or an
``http://`` URL. The rule: the artifact and the profile live under the namespace's own part of the
store (``<root>/<namespace>/``, ARCHITECTURE §4) or under a registry prefix the operator was told
to trust (``NORIA_TRUSTED_ARTIFACT_PREFIXES``; ``{namespace}`` in a prefix stands for the
ModelVersion's namespace).

Two places check: the API server refuses malformed URIs (``noria.api.common.ARTIFACT_URI_RULES``:
scheme, ``..``, query, empty segments, characters); a CRD's CEL rules cannot read the object's
namespace (even a rule on the root sees only ``metadata.name`` and ``generateName``), and the store
root and trusted prefixes are operator settings, so the scope itself is judged here, by the operator,
which repeats the syntax rules first (objects stored before the rules existed). Because those rules exclude ``..``, ``//`` and
percent-escapes, a plain prefix comparison is sound.

The same scope, with one more shared place, governs where a TrainingPipeline's ``spec.data.source``
may be read (``data_source_scope``): the trainer reads it in the pipeline's namespace and ships what
it learnt there (model, metrics), so a pipeline in ``ml2`` reading ``ml``'s logged predictions
would leak them. A source lies under the namespace's own part of the store, the store's shared
``datasets/`` folder (where datasets are put for every pipeline), or a prefix trusted for data
(``NORIA_TRUSTED_DATA_PREFIXES``, separate from the artifact prefixes: a registry trusted to hold
models is not thereby a place every namespace may read data from). One ``UriScope.problem`` judges
both kinds of URI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria.api.common import ARTIFACT_URI_RULES, DATA_SOURCE_RULES, UriRule, uri_problems
from noria.store import join, namespace_root

NAMESPACE_PLACEHOLDER: Final = "{namespace}"
TRUSTED_PREFIXES_ENV: Final = "NORIA_TRUSTED_ARTIFACT_PREFIXES"
TRUSTED_DATA_PREFIXES_ENV: Final = "NORIA_TRUSTED_DATA_PREFIXES"
# The store folder every namespace's pipelines may read data from (ARCHITECTURE §4 puts datasets
# there; so do the examples and the demo). Only data: never a ModelVersion's artifact.
SHARED_DATASETS_DIR: Final = "datasets"
DATA_SOURCE_FIELD: Final = "spec.data.source"
FEAST_REPOSITORY_FIELD: Final = "spec.data.feast.repository"
# The ModelVersion fields that name files a server or trainer opens, as `kubectl explain` spells them.
URI_FIELDS: Final = (("spec.artifact.uri", ("artifact", "uri")), ("spec.profileUri", ("profileUri",)))


class InvalidTrustedPrefix(ValueError):
    """A configured trusted prefix is not a usable URI prefix."""


def parse_trusted_prefixes(text: str, env: str = TRUSTED_PREFIXES_ENV) -> tuple[str, ...]:
    """``"s3://models/{namespace}/, file:///mnt/registry"`` -> normalised prefixes ending in ``/``.

    Raises ``InvalidTrustedPrefix`` naming the setting (``env``), the prefix and the rule it breaks:
    an operator started with a prefix it cannot honour must say so, not trust less (or more) than it
    was told. A prefix obeys the artifact rules (no glob characters) for both kinds of URI."""
    out = []
    for raw in text.replace(",", " ").split():
        prefix = raw.rstrip("/") + "/"
        sample = prefix.replace(NAMESPACE_PLACEHOLDER, "ns") + "x"
        problems = uri_problems(sample, ARTIFACT_URI_RULES)
        if problems or prefix == "file:///":
            why = "; ".join(problems) or "would trust the whole file system: name a directory"
            raise InvalidTrustedPrefix(f"{env}: {raw!r} {why}")
        out.append(prefix)
    return tuple(out)


@dataclass(frozen=True)
class OutOfScope:
    """Why one URI field of a ModelVersion (or a TrainingPipeline's data source) is refused."""

    field: str
    uri: str
    message: str


@dataclass(frozen=True)
class UriScope:
    """Where the URIs of one kind (artifacts, data sources) of a namespace may point: its part of
    the store, the store folders every namespace shares for that kind, and trusted prefixes."""

    store_root: str
    trusted_prefixes: tuple[str, ...] = ()
    shared_dirs: tuple[str, ...] = ()  # store-relative folders any namespace may use
    rules: tuple[UriRule, ...] = ARTIFACT_URI_RULES  # the syntax rules, repeated before the scope
    prefixes_env: str = TRUSTED_PREFIXES_ENV  # the setting that names the trusted prefixes
    prefix_words: str = "trusted registry prefix"
    remedy: str = "copy the model into the namespace's store or ask the operator's admin to trust its registry"

    def allowed_roots(self, namespace: str) -> tuple[str, ...]:
        """The namespace's own store folder first, then the shared folders, then trusted prefixes."""
        own = namespace_root(self.store_root, namespace)
        shared = tuple(join(self.store_root, d) + "/" for d in self.shared_dirs)
        return (own, *shared, *(p.replace(NAMESPACE_PLACEHOLDER, namespace) for p in self.trusted_prefixes))

    def problem(self, uri: str, namespace: str) -> str | None:
        """None when ``uri`` may be opened for an object of ``namespace``, else why not."""
        problems = uri_problems(uri, self.rules)
        if problems:
            return "; ".join(problems)
        roots = self.allowed_roots(namespace)
        if any(uri.startswith(root) for root in roots):
            return None
        shared = roots[1:1 + len(self.shared_dirs)]
        trusted = ", ".join(roots[1 + len(self.shared_dirs):]) or f"none configured ({self.prefixes_env})"
        where = f"namespace {namespace}'s store ({roots[0]})"
        if shared:
            where += f", the shared {', '.join(shared)}"
        return f"is outside {where} and every {self.prefix_words} ({trusted}); {self.remedy}"

    def check(self, model_version: Mapping[str, Any]) -> OutOfScope | None:
        """The first refused URI field of ``model_version``, or None when all are in scope."""
        namespace = (model_version.get("metadata") or {}).get("namespace") or ""
        spec = model_version.get("spec") or {}
        for field, path in URI_FIELDS:
            value: Any = spec
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            if value is None:
                if field == "spec.artifact.uri":
                    return OutOfScope(field, "", f"{field} is missing")
                continue
            uri = str(value)
            why = self.problem(uri, namespace)
            if why is not None:
                return OutOfScope(field, uri, f"{field} {uri[:200]!r} {why}"[:1000])
        return None

    def check_data_source(self, pipeline: Mapping[str, Any]) -> OutOfScope | None:
        """``spec.data.source`` of a TrainingPipeline refused (use on a ``data_source_scope``)."""
        namespace = (pipeline.get("metadata") or {}).get("namespace") or ""
        data = (pipeline.get("spec") or {}).get("data")
        uri = data.get("source") if isinstance(data, Mapping) else None
        if not isinstance(uri, str) or not uri:
            return OutOfScope(DATA_SOURCE_FIELD, "", f"{DATA_SOURCE_FIELD} is missing")
        why = self.problem(uri, namespace)
        if why is not None:
            return OutOfScope(DATA_SOURCE_FIELD, uri, f"{DATA_SOURCE_FIELD} {uri[:200]!r} {why}"[:1000])
        # A Feast repository is read by the trainer like the source (docs/training-feast.md): same rule.
        feast = data.get("feast") if isinstance(data, Mapping) else None
        repository = feast.get("repository") if isinstance(feast, Mapping) else None
        if isinstance(repository, str) and repository:
            why = self.problem(repository, namespace)
            if why is not None:
                return OutOfScope(FEAST_REPOSITORY_FIELD, repository,
                                  f"{FEAST_REPOSITORY_FIELD} {repository[:200]!r} {why}"[:1000])
        return None


# The name the artifact side has always used: a UriScope with the artifact rules and no shared folder.
ArtifactScope = UriScope


def data_source_scope(store_root: str, trusted_prefixes: tuple[str, ...] = ()) -> UriScope:
    """Where a TrainingPipeline's ``spec.data.source`` may be: the namespace's store folder (its own
    pipelines' data and prediction/feedback logs: one namespace is one tenant), the shared
    ``datasets/`` folder, and prefixes trusted for data."""
    return UriScope(
        store_root, trusted_prefixes, shared_dirs=(SHARED_DATASETS_DIR,), rules=DATA_SOURCE_RULES,
        prefixes_env=TRUSTED_DATA_PREFIXES_ENV, prefix_words="trusted data prefix",
        remedy=(f"put the data under the store's {SHARED_DATASETS_DIR}/ folder or the namespace's own folder,"
                " or ask the operator's admin to trust its location"),
    )
