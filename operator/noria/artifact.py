"""Model artifacts: skops files checked against a sha256 digest before a single byte is parsed.

Threat model: the store is shared by trainer Jobs, servers and people with write access to the
volume. A tampered or swapped file must never execute code. So (1) the file's sha256 must equal
the digest recorded in the immutable ModelVersion spec, and only then (2) skops parses it, with
an explicit list of trusted types computed from an allow-list of module prefixes: scikit-learn,
NumPy and SciPy types that skops reconstructs without running arbitrary callables. Anything else
(``builtins.eval``, ``os.system``, a ``__main__`` class, a pickle renamed ``.skops``) is refused
with the offending type names. pickle/joblib loading is never offered.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

DIGEST_PATTERN: Final = re.compile(r"^sha256:[0-9a-f]{64}$")

# Module prefixes whose types may be reconstructed. Kept deliberately short.
TRUSTED_MODULE_PREFIXES: Final = ("sklearn.", "numpy.", "scipy.sparse.", "scipy.special.")
# A few standard-library types that sklearn objects commonly hold and that skops does not trust
# by default; none of them can run code when constructed.
TRUSTED_EXACT_TYPES: Final = frozenset(
    {
        "builtins.slice",
        "collections.OrderedDict",
        "collections.defaultdict",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.ufunc",
    }
)
# Callables that live under a trusted prefix but must never be reconstructed anyway.
REFUSED_TYPES: Final = frozenset({"numpy.load", "numpy.loadtxt", "numpy.fromfile", "numpy.memmap"})


class ArtifactError(Exception):
    """The artifact cannot be served: wrong digest, unparsable file, or untrusted types."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def is_trusted_type(name: str) -> bool:
    if name in REFUSED_TYPES:
        return False
    return name in TRUSTED_EXACT_TYPES or name.startswith(TRUSTED_MODULE_PREFIXES)


def dumps_model(model: Any) -> tuple[bytes, list[str]]:
    """Serialise ``model`` with skops; return the bytes and the types skops would not trust by
    default (recorded in metadata so a reviewer can see what the loader will be asked to accept)."""
    import skops.io as sio

    data = sio.dumps(model)
    return data, sorted(sio.get_untrusted_types(data=data))


def loads_verified(data: bytes, expected_digest: str) -> Any:
    """Check the digest, then load with skops and the allow-listed trusted types."""
    import skops.io as sio

    if not DIGEST_PATTERN.match(expected_digest or ""):
        raise ArtifactError(f"expected digest {expected_digest!r} is not of the form sha256:<64 hex>")
    actual = sha256_digest(data)
    if actual != expected_digest:
        raise ArtifactError(f"digest mismatch: the file has {actual}, the ModelVersion says {expected_digest}")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a pickle or any non-skops file ends here, before any object is built
        raise ArtifactError(f"not a skops artifact: {type(exc).__name__}: {exc}") from exc
    refused = sorted(t for t in untrusted if not is_trusted_type(t))
    if refused:
        raise ArtifactError(f"artifact contains untrusted types: {', '.join(refused)}")
    try:
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise ArtifactError(f"skops could not load the artifact: {type(exc).__name__}: {exc}") from exc


def load_verified(uri: str, expected_digest: str) -> Any:
    """Read ``uri`` (any fsspec URI) and return the model, or raise ArtifactError saying why not."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {uri}: {exc}") from exc
    return loads_verified(data, expected_digest)
