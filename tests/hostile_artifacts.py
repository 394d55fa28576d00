"""A corpus of hostile model artifacts, written by hand as an attacker would, for the loader's tests.

Each case is a file (or a path that is not a file) with the digest a ModelVersion would carry, the
refusal kind the loader must give, and words its message must contain. The code-execution cases
carry a marker path: their payload creates it if anything ever builds them (``payload_is_live``
proves each one does, through plain skops, so a refusal is a real refusal). Shared by the unit
tests of ``noria.artifact``, the real-server refusal tests and the real-trainer champion tests.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noria.artifact import sha256_digest

_ids = itertools.count(1_000_000)


# --- schema nodes as skops writes them (protocol 2) ----------------------------------------------
def node(loader: str, module: str, cls: str, **extra: Any) -> dict[str, Any]:
    return {"__class__": cls, "__module__": module, "__loader__": loader, "__id__": next(_ids), **extra}


def json_node(value: Any) -> dict[str, Any]:
    return node("JsonNode", "builtins", "str", content=json.dumps(value), is_json=True)


def tuple_node(*items: dict[str, Any]) -> dict[str, Any]:
    return node("TupleNode", "builtins", "tuple", content=list(items))


def list_node(items: list[dict[str, Any]], module: str = "builtins", cls: str = "list") -> dict[str, Any]:
    return node("ListNode", module, cls, content=items)


def dict_node(content: dict[str, dict[str, Any]]) -> dict[str, Any]:
    key_types = list_node([node("TypeNode", "builtins", "str") for _ in content])
    return node("DictNode", "builtins", "dict", content=content, key_types=key_types)


def ndarray_node(member: str) -> dict[str, Any]:
    return node("NdArrayNode", "numpy", "ndarray", type="numpy", file=member)


def root(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "protocol": 2, "_skops_version": "0.16.0"}


def skops_zip(schema: dict[str, Any], members: dict[str, bytes] | None = None,
              compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in (members or {}).items():
            archive.writestr(name, data)
        archive.writestr("schema.json", json.dumps(schema))
    return buffer.getvalue()


def npy_bytes(array: Any) -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


# --- the payloads: callables under trusted-looking prefixes -------------------------------------
def python_that_touches(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def exec_via_numpy_testing(marker: Path) -> dict[str, Any]:
    """``numpy.testing._private.utils.runstring(code, {})`` is ``exec``: built by a reduce node."""
    return node("ConstructorFromReduceNode", "numpy.testing._private.utils", "runstring",
                content=tuple_node(json_node(python_that_touches(marker)), dict_node({})))


def subprocess_via_sklearn_testing(marker: Path) -> dict[str, Any]:
    """``sklearn.utils._testing.assert_run_python_script_without_output(code)`` starts a Python
    process; a loss node calls its "constructor" with arguments from the file."""
    return node("LossNode", "sklearn.utils._testing", "assert_run_python_script_without_output",
                __reduce__={"args": tuple_node(json_node(python_that_touches(marker)), json_node(".*"))},
                content=dict_node({}))


def check_output_as_list_type(marker: Path) -> dict[str, Any]:
    """``sklearn.utils._testing.check_output`` is ``subprocess.check_output``; a list node calls its
    class with the list's items: ``check_output(["touch", marker])``."""
    return list_node([json_node("touch"), json_node(str(marker))], "sklearn.utils._testing", "check_output")


def open_for_writing_via_numpy_datasource(marker: Path) -> dict[str, Any]:
    """``numpy.lib._datasource._open`` is ``builtins.open``: ``open(marker, "w")`` creates files."""
    return node("ConstructorFromReduceNode", "numpy.lib._datasource", "_open",
                content=tuple_node(json_node(str(marker)), json_node("w")))


def inside_a_real_model(real_model: bytes, payload: dict[str, Any]) -> bytes:
    """A genuine trained pipeline with one extra attribute holding the payload."""
    with zipfile.ZipFile(io.BytesIO(real_model)) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != "schema.json"}
        schema = json.loads(archive.read("schema.json"))
    attrs = schema["content"]["content"]
    attrs["_payload"] = payload
    schema["content"]["key_types"]["content"].append(node("TypeNode", "builtins", "str"))
    return skops_zip(schema, members)


CODE_PAYLOADS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "exec-via-numpy-testing-runstring": exec_via_numpy_testing,
    "python-subprocess-via-sklearn-utils-testing": subprocess_via_sklearn_testing,
    "check-output-via-sklearn-utils-testing": check_output_as_list_type,
    "open-for-writing-via-numpy-datasource": open_for_writing_via_numpy_datasource,
}


# --- archives that exhaust memory or lie about themselves ---------------------------------------
def _deflate_padded(head: bytes, pad: bytes, size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``head`` then the one byte ``pad`` repeated up to ``size`` bytes in
    all, and its CRC, built a MiB at a time without holding the inflated bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = zlib.crc32(head)
    parts = [comp.compress(head)]
    block, left = pad * (1 << 20), size - len(head)
    while left:
        chunk = block[:min(left, len(block))]
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    parts.append(comp.flush())
    return b"".join(parts), crc


@functools.lru_cache(maxsize=4)
def _deflate_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes and its CRC."""
    return _deflate_padded(b"", b"\0", size)


def zip_with_raw_member(schema: dict[str, Any], name: str, packed: bytes, crc: int, declared: int,
                        method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip whose member ``name`` holds ``packed`` and *declares* ``declared`` uncompressed bytes."""
    schema_bytes = json.dumps(schema).encode()
    out = io.BytesIO()
    central = []
    for member, data, member_crc, size, how in ((name, packed, crc, declared, method),
                                                ("schema.json", schema_bytes, zlib.crc32(schema_bytes),
                                                 len(schema_bytes), zipfile.ZIP_STORED)):
        offset = out.tell()
        encoded = member.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, how, 0, 0, member_crc, len(data), size,
                              len(encoded), 0))
        out.write(encoded)
        out.write(data)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, how, 0, 0, member_crc, len(data), size,
                                   len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    start = out.tell()
    for record in central:
        out.write(record)
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), out.tell() - start,
                          start, 0))
    return out.getvalue()


def zip_bomb(inflated: int = 1 << 30) -> bytes:
    """About 1 MiB that inflates to ``inflated`` bytes, honestly declared (the issue's 1 GiB member
    drove the server to 2–3 GB RSS)."""
    packed, crc = _deflate_zeros(inflated)
    return zip_with_raw_member(root(ndarray_node("bomb.npy")), "bomb.npy", packed, crc, inflated)


def lying_member(inflated: int = 1 << 30, declared: int = 4096) -> bytes:
    """The same deflate stream declaring 4 KiB: zipfile must stop at 4 KiB (and fail the CRC)."""
    packed, crc = _deflate_zeros(inflated)
    return zip_with_raw_member(root(ndarray_node("lie.npy")), "lie.npy", packed, crc, declared)


def padded_schema(size: int = 512 << 20) -> bytes:
    """schema.json padded with 512 MiB of spaces, deflated to about 0.5 MiB."""
    packed, crc = _deflate_padded(json.dumps(root(json_node(1))).encode(), b" ", size)
    return _single_member_zip("schema.json", packed, crc, size)


def _single_member_zip(name: str, packed: bytes, crc: int, declared: int) -> bytes:
    out = io.BytesIO()
    encoded = name.encode()
    out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, zipfile.ZIP_DEFLATED, 0, 0, crc, len(packed), declared,
                          len(encoded), 0))
    out.write(encoded)
    out.write(packed)
    start = out.tell()
    out.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, 0, crc, len(packed),
                          declared, len(encoded), 0, 0, 0, 0, 0, 0) + encoded)
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, out.tell() - start, start, 0))
    return out.getvalue()


def many_members(count: int = 30_000) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            archive.writestr(f"{i}.bin", b"")
        archive.writestr("schema.json", json.dumps(root(json_node(1))))
    return buffer.getvalue()


def member_named_many_times(times: int = 1100, member_bytes: int = 1 << 20) -> bytes:
    """One honest 1 MiB array named by 1,100 nodes: skops would read (copy) it 1,100 times."""
    import numpy as np

    array = npy_bytes(np.zeros(member_bytes // 8))
    schema = root(list_node([ndarray_node("a.npy") for _ in range(times)]))
    return skops_zip(schema, {"a.npy": array})


def npy_shape_lie() -> bytes:
    """An .npy header claiming 10**12 float64 values over 8 bytes of data."""
    import numpy as np

    honest = npy_bytes(np.zeros(1))
    header_end = honest.index(b"\n") + 1
    header = honest[:header_end].replace(b"(1,)", b"(1000000000000,)")
    pad = len(honest[:header_end]) - len(header)
    header = header[:-1] + b" " * pad + b"\n" if pad >= 0 else header
    return skops_zip(root(ndarray_node("x.npy")), {"x.npy": header + honest[header_end:]})


def deeply_nested(depth: int = 300) -> bytes:
    """Lists in lists, 300 deep: skops recurses once per level (and several frames per node)."""
    opening = "".join('{"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", '
                      f'"__id__": {next(_ids)}, "content": [' for _ in range(depth))
    text = '{"protocol": 2, "_skops_version": "0.16.0", "__class__": "list", "__module__": "builtins", ' \
           '"__loader__": "ListNode", "content": [' + opening + json.dumps(json_node(0)) + "]}" * depth + "]}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", text)
    return buffer.getvalue()


class _RunsCommandWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


# --- the corpus ----------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    uri: str
    digest: str
    kind: str
    words: tuple[str, ...] = ()
    marker: Path | None = None
    store_root: str | None = None  # the store the loader is told about (None: no containment check)
    notes: dict[str, Any] = field(default_factory=dict)


def build_corpus(base: Path, real_model: bytes) -> list[Case]:
    """Write every hostile artifact under ``base/store/ml/churn/<case>/`` (plus what lies outside the
    store) and return the cases. ``real_model`` is a genuine skops pipeline to hide payloads in."""
    store = base / "store"
    outside = base / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    markers = base / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    store_uri = f"file://{store}"
    cases: list[Case] = []

    def put(name: str, data: bytes, kind: str, *words: str, marker: Path | None = None,
            digest: str | None = None) -> Path:
        folder = store / "ml" / "churn" / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.skops"
        path.write_bytes(data)
        cases.append(Case(name, f"file://{path}", digest or sha256_digest(data), kind, words, marker, store_uri))
        return path

    for name, payload in CODE_PAYLOADS.items():
        marker = markers / name
        put(name, skops_zip(root(payload(marker))), "UntrustedType", "untrusted types", marker=marker)
    marker = markers / "payload-inside-a-real-model"
    put("payload-inside-a-real-model", inside_a_real_model(real_model, exec_via_numpy_testing(marker)),
        "UntrustedType", "numpy.testing._private.utils.runstring", marker=marker)
    put("zip-bomb-1GiB", zip_bomb(1 << 30), "TooLarge", "bomb.npy", "declares")
    put("zip-bomb-400MiB", zip_bomb(400 << 20), "SuspiciousCompression", "bomb.npy", "ratio")
    put("member-declares-less-than-it-inflates", lying_member(), "SuspiciousCompression", "lie.npy")
    put("padded-schema-512MiB", padded_schema(), "TooLarge", "schema.json")
    put("30000-members", many_members(), "TooManyMembers", "members")
    put("one-member-read-1100-times", member_named_many_times(), "TooLarge", "read")
    put("npy-header-claims-8TB", npy_shape_lie(), "Malformed", "x.npy", "shape")
    put("nested-300-deep", deeply_nested(), "Malformed", "deeper")
    marker = markers / "pickle"
    put("pickle-renamed-skops", pickle.dumps(_RunsCommandWhenUnpickled(str(marker))), "NotSkops",
        "not a skops artifact", marker=marker)
    put("truncated", real_model[: len(real_model) // 2], "NotSkops", "not a skops artifact")
    put("wrong-digest", real_model, "DigestMismatch", "digest mismatch", digest=sha256_digest(b"another model"))

    big = store / "ml" / "churn" / "sparse-600MiB" / "model.skops"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as handle:
        handle.truncate(600 << 20)  # sparse: costs no disk, and must cost no memory either
    cases.append(Case("sparse-600MiB", f"file://{big}", sha256_digest(b"x"), "TooLarge", ("bytes",),
                      store_root=store_uri))

    link = store / "ml" / "churn" / "symlink-to-dev-zero" / "model.skops"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/dev/zero")
    cases.append(Case("symlink-to-dev-zero", f"file://{link}", sha256_digest(b""), "NotARegularFile",
                      ("symbolic link", "/dev/zero"), store_root=store_uri))
    cases.append(Case("dev-zero-without-store-root", "file:///dev/zero", sha256_digest(b""), "NotARegularFile",
                      ("character device",)))
    cases.append(Case("dev-zero-with-store-root", "file:///dev/zero", sha256_digest(b""), "OutsideStore",
                      ("outside the store",), store_root=store_uri))

    fifo = store / "ml" / "churn" / "fifo" / "model.skops"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    cases.append(Case("fifo", f"file://{fifo}", sha256_digest(b""), "NotARegularFile", ("FIFO",),
                      store_root=store_uri))

    genuine_outside = outside / "model.skops"
    genuine_outside.write_bytes(real_model)
    real_digest = sha256_digest(real_model)
    link_out = store / "ml" / "churn" / "symlink-out-of-store" / "model.skops"
    link_out.parent.mkdir(parents=True, exist_ok=True)
    link_out.symlink_to(genuine_outside)
    cases.append(Case("symlink-out-of-store", f"file://{link_out}", real_digest, "NotARegularFile",
                      ("symbolic link",), store_root=store_uri))
    (store / "ml" / "churn" / "v9").symlink_to(outside, target_is_directory=True)
    cases.append(Case("directory-symlink-out-of-store", f"file://{store}/ml/churn/v9/model.skops", real_digest,
                      "OutsideStore", ("resolves to",), store_root=store_uri))
    cases.append(Case("dot-dot-out-of-store", f"file://{store}/ml/churn/../../outside/model.skops", real_digest,
                      "OutsideStore", ("'..'",), store_root=store_uri))
    cases.append(Case("another-namespace-store-path", f"file://{outside}/model.skops", real_digest,
                      "OutsideStore", ("outside the store",), store_root=store_uri))
    cases.append(Case("http-uri", "http://203.0.113.1/model.skops", real_digest, "OutsideStore", ("file://",),
                      store_root=store_uri))
    return cases


def payload_is_live(data: bytes, marker: Path) -> bool:
    """Build ``data`` with plain skops in a child process, trusting every type skops reports (what a
    prefix rule did), and say whether the payload ran. Proves a refused payload is a real one."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".skops", delete=False) as handle:
        handle.write(data)
    script = ("import sys, skops.io as sio\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "try:\n    sio.loads(data, trusted=sio.get_untrusted_types(data=data))\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    try:
        subprocess.run([sys.executable, "-c", script, handle.name], timeout=120, capture_output=True, check=False)
    finally:
        os.unlink(handle.name)
    return marker.exists()
