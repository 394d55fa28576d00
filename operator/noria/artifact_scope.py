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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from noria.api.common import artifact_uri_problems
from noria.store import namespace_root

NAMESPACE_PLACEHOLDER: Final = "{namespace}"
TRUSTED_PREFIXES_ENV: Final = "NORIA_TRUSTED_ARTIFACT_PREFIXES"
# The ModelVersion fields that name files a server or trainer opens, as `kubectl explain` spells them.
URI_FIELDS: Final = (("spec.artifact.uri", ("artifact", "uri")), ("spec.profileUri", ("profileUri",)))


class InvalidTrustedPrefix(ValueError):
    """A configured trusted prefix is not a usable URI prefix."""


def parse_trusted_prefixes(text: str) -> tuple[str, ...]:
    """``"s3://models/{namespace}/, file:///mnt/registry"`` -> normalised prefixes ending in ``/``.

    Raises ``InvalidTrustedPrefix`` naming the prefix and the rule it breaks: an operator started
    with a prefix it cannot honour must say so, not trust less (or more) than it was told."""
    out = []
    for raw in text.replace(",", " ").split():
        prefix = raw.rstrip("/") + "/"
        sample = prefix.replace(NAMESPACE_PLACEHOLDER, "ns") + "x"
        problems = artifact_uri_problems(sample)
        if problems or prefix == "file:///":
            why = "; ".join(problems) or "would trust the whole file system: name a directory"
            raise InvalidTrustedPrefix(f"{TRUSTED_PREFIXES_ENV}: {raw!r} {why}")
        out.append(prefix)
    return tuple(out)


@dataclass(frozen=True)
class OutOfScope:
    """Why one field of a ModelVersion is refused."""

    field: str
    uri: str
    message: str


@dataclass(frozen=True)
class ArtifactScope:
    """Where the ModelVersions of a namespace may point: its part of the store, trusted prefixes."""

    store_root: str
    trusted_prefixes: tuple[str, ...] = ()

    def allowed_roots(self, namespace: str) -> tuple[str, ...]:
        own = namespace_root(self.store_root, namespace)
        return (own, *(p.replace(NAMESPACE_PLACEHOLDER, namespace) for p in self.trusted_prefixes))

    def problem(self, uri: str, namespace: str) -> str | None:
        """None when ``uri`` may be opened for a ModelVersion of ``namespace``, else why not."""
        problems = artifact_uri_problems(uri)
        if problems:
            return "; ".join(problems)
        roots = self.allowed_roots(namespace)
        if any(uri.startswith(root) for root in roots):
            return None
        trusted = ", ".join(roots[1:]) or f"none configured ({TRUSTED_PREFIXES_ENV})"
        return (f"is outside namespace {namespace}'s store ({roots[0]}) and every trusted registry prefix"
                f" ({trusted}); copy the model into the namespace's store or ask the operator's admin to trust"
                " its registry")

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
