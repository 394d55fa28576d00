"""The trusted-type list (noria.trusted_types) is exactly what the trainer writes, and nothing else
under numpy, scipy or scikit-learn gets through the loader's audit."""

from __future__ import annotations

import json
import subprocess
import sys

from noria.trusted_types import TRUSTED_TYPES


def test_the_list_holds_every_type_the_trainer_writes() -> None:
    """Trains every allowed estimator (both tasks, binary/multiclass/string labels, each parameter
    that changes the fitted objects); fails naming any (loader, type) the list lacks."""
    from noria_trainer.written_types import render, written_types

    written = written_types()
    missing = sorted(f"{loader}: {name}" for loader, names in written.items() for name in names
                     if name not in TRUSTED_TYPES.get(loader, ()))
    assert not missing, ("the trainer writes types the loader would refuse; review them and regenerate "
                         "operator/noria/trusted_types.py with `python -m noria_trainer.written_types`:\n"
                         + "\n".join(missing) + "\n\n" + render(written))
    stale = sorted(f"{loader}: {name}" for loader, names in TRUSTED_TYPES.items() for name in names
                   if name not in written.get(loader, ()))
    assert not stale, "trusted but never written by the trainer (remove them):\n" + "\n".join(stale)


# Runs in a child process: importing ~1,300 modules (and their import-time side effects) stays out
# of the test process. Prints JSON: modules imported, callables seen, and any callable the audit let
# through that is not on the list for that loader.
WALK = r'''
import contextlib, importlib, io, json, os, pkgutil, sys, warnings
warnings.simplefilter("ignore")
from noria.artifact import Archive, ArtifactError, Limits, audit_schema
from noria.trusted_types import TRUSTED_TYPES

names = set()
for root in ("numpy", "scipy", "sklearn"):
    package = importlib.import_module(root)
    todo = [root] + [m.name for m in pkgutil.walk_packages(package.__path__, root + ".", onerror=lambda _: None)]
    for module_name in todo:
        # test suites and __main__ entry points are not library code (and __main__ runs on import)
        if ".tests" in module_name or "._tests" in module_name or module_name.endswith("__main__"):
            continue
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                importlib.import_module(module_name)
            except BaseException:
                continue
imported = 0
for module_name, module in list(sys.modules.items()):
    if module is None or module_name.split(".")[0] not in ("numpy", "scipy", "sklearn"):
        continue
    imported += 1
    for attr, value in list(vars(module).items()):
        if callable(value):
            names.add((module_name, attr))
            for sub, inner in list(getattr(value, "__dict__", {}).items()) if isinstance(value, type) else []:
                if callable(inner):
                    names.add((f"{module_name}.{attr}", sub))

LOADERS = ("ObjectNode", "TypeNode", "FunctionNode", "ConstructorFromReduceNode", "LossNode", "TreeNode",
           "ListNode", "TupleNode", "SetNode", "DictNode", "NdArrayNode", "PartialNode", "MethodNode",
           "RandomStateNode", "RandomGeneratorNode", "DTypeNode", "SliceNode", "JsonNode", "DefaultDictNode",
           "OperatorFuncNode", "SparseMatrixNode", "BytesNode", "MaskedArrayNode", "CachedNode")
limits = Limits()
leaked, accepted = [], 0
for module_name, attr in sorted(names):
    for loader in LOADERS:
        node = {"__class__": attr, "__module__": module_name, "__loader__": loader, "protocol": 2}
        try:
            audit_schema(Archive(node, {}), limits)
        except ArtifactError:
            continue
        accepted += 1
        if f"{module_name}.{attr}" not in TRUSTED_TYPES.get(loader, ()):
            leaked.append(f"{loader}: {module_name}.{attr}")
print(json.dumps({"imported": imported, "callables": len(names), "accepted": accepted, "leaked": leaked,
                  "seen": sorted(f"{m}.{a}" for m, a in names if a in (
                      "runstring", "check_output", "assert_run_python_script_without_output", "_open", "Popen"))}))
'''


def test_no_callable_under_numpy_scipy_or_sklearn_passes_the_audit_unless_listed() -> None:
    done = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, timeout=900, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["leaked"], report["leaked"][:50]
    # the walk is real: it reached the library modules and the helpers that run code
    assert report["imported"] > 1000 and report["callables"] > 20_000, report
    for dangerous in ("numpy.testing._private.utils.runstring", "sklearn.utils._testing.check_output",
                      "sklearn.utils._testing.assert_run_python_script_without_output",
                      "numpy.lib._datasource._open"):
        assert dangerous in report["seen"], dangerous
    # the accepted ones are the listed classes and types reachable by name, nothing more
    listed = sum(len(names) for names in TRUSTED_TYPES.values())
    assert 0 < report["accepted"] <= listed
