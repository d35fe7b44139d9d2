"""What makes a logged model load in any Python with mlflow and torch: its code, its signature, its pins.

Why: a pyfunc pickled by reference to ``sparkzoo.pipelines.modelpack`` needs sparkzoo installed wherever
it is loaded, and no package index serves sparkzoo. So the model is logged "from code": a generated
``sparkzoo_pyfunc.py`` (``mlflow.models.set_model``) plus, in ``code_paths``, a small package with just
what predicting needs, the ``models`` zoo (torch and numpy only) and four modules of ``pipelines``.
The package is copied from the installed sparkzoo's own files (a wheel install works the same as a
checkout) and named after a hash of its contents (``sparkzoo_model_<hash>``): it cannot clash with an
installed sparkzoo, and a Python that loads two models logged by different sparkzoo versions keeps
both codes apart (MLflow puts every ``code`` folder on ``sys.path`` and never unloads modules).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

BUNDLE_PREFIX = "sparkzoo_model_"
# The modules of ``pipelines`` the pyfunc runs (modelpack imports the other three, relatively).
PIPELINE_MODULES = ("modelpack", "modelspec", "sequence_inputs", "textnorm")
MODEL_FILE = "sparkzoo_pyfunc.py"

# The input columns a logged model can be sent, by the column name the training example uses.
_INPUT_TYPES = {"image": "binary", "features": "binary", "text": "string"}


def _sources() -> dict[str, str]:
    """Bundle-relative path -> source file of the installed sparkzoo, for every file the bundle holds."""
    from .. import models

    here = os.path.dirname(os.path.abspath(__file__))
    zoo = os.path.dirname(os.path.abspath(models.__file__))
    files = {f"pipelines/{name}.py": os.path.join(here, f"{name}.py") for name in PIPELINE_MODULES}
    for folder, _, names in sorted(os.walk(zoo)):
        rel = os.path.relpath(folder, zoo).replace(os.sep, "/")
        prefix = "models/" if rel == "." else f"models/{rel}/"
        files.update({prefix + name: os.path.join(folder, name) for name in sorted(names) if name.endswith(".py")})
    return files


def _check_self_contained(path: str, source: str, bundled: set[str]) -> None:
    """A relative import of a module the bundle lacks would only fail where the model is loaded, far from
    the change that caused it; fail at log time instead, naming the import."""
    package = path.rsplit("/", 1)[0].split("/")
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = "/".join(base + (node.module.split(".") if node.module else []))
            needed = [target] if node.module else [f"{target}/{alias.name}" for alias in node.names]
            missing = [t for t in needed if t not in bundled]
            if missing:
                raise ValueError(f"{path} imports {missing[0].replace('/', '.')}, which the logged model's code "
                                 f"bundle does not carry; add it to model_bundle.PIPELINE_MODULES")
            continue
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if any(n.split(".")[0] == "sparkzoo" for n in names):
            raise ValueError(f"{path} imports sparkzoo by name; the logged model's code must import its siblings "
                             f"relatively (the model loads where sparkzoo is not installed)")


def _module_paths(files: dict[str, str]) -> set[str]:
    """Every importable name in the bundle as a path without ``.py``: modules and their packages."""
    out = {"pipelines", "models"}
    for path in files:
        stem = path[:-3]
        out.add(stem[:-len("/__init__")] if stem.endswith("/__init__") else stem)
    return out


@contextlib.contextmanager
def bundle(directory: str) -> Iterator[tuple[list[str], str]]:
    """Write the code package and the models-from-code file under ``directory`` (which the caller owns
    and removes); yields ``(code_paths, model_file)`` for ``mlflow.pyfunc.log_model``, with the package
    importable meanwhile, because MLflow runs the model file and loads the model to check the input
    example while it logs. On exit the package leaves ``sys.path`` and ``sys.modules`` again."""
    files = _sources()
    texts = {path: Path(src).read_text(encoding="utf-8") for path, src in files.items()}
    bundled = _module_paths(files)
    for path, text in texts.items():
        _check_self_contained(path, text, bundled)
    digest = hashlib.sha256("".join(f"{p}\0{t}\0" for p, t in sorted(texts.items())).encode()).hexdigest()[:12]
    name = BUNDLE_PREFIX + digest
    code = os.path.join(directory, "code")
    root = os.path.join(code, name)
    texts["__init__.py"] = f'"""The code of a sparkzoo model, as logged with it (content hash {digest})."""\n'
    texts["pipelines/__init__.py"] = ""   # sparkzoo's own pulls in nothing, and this one must not either
    for path, text in texts.items():
        target = Path(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    model_file = os.path.join(directory, MODEL_FILE)
    Path(model_file).write_text(
        f'"""A sparkzoo model (models-from-code): spec.json and weights.pt are its artifacts."""\n\n'
        f"import mlflow\n\nfrom {name}.pipelines.modelpack import SparkzooPyfunc\n\n"
        f"mlflow.models.set_model(SparkzooPyfunc())\n", encoding="utf-8")
    saved_path = list(sys.path)
    sys.path.insert(0, code)
    try:
        yield [root], model_file
    finally:
        sys.path[:] = saved_path   # drops the model folders' code/ that MLflow's check load put first
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def _ddl_type(ddl: str):
    """One Spark DDL type of a task's ``output_schema`` -> the MLflow type (scalars and arrays of them)."""
    from mlflow.types import DataType
    from mlflow.types.schema import Array

    ddl = ddl.strip()
    if ddl.startswith("array<") and ddl.endswith(">"):
        return Array(_ddl_type(ddl[len("array<"):-1]))
    scalars = {"long": "long", "bigint": "long", "int": "integer", "integer": "integer", "float": "float",
               "double": "double", "string": "string", "binary": "binary", "boolean": "boolean"}
    if ddl not in scalars:
        raise ValueError(f"no MLflow type for Spark type '{ddl}' in a task's output_schema")
    return getattr(DataType, scalars[ddl])


def output_schema(ddl: str):
    """A task's ``output_schema`` (Spark DDL, no nested commas) as an MLflow ``Schema``."""
    from mlflow.types import ColSpec, Schema

    cols = [part.strip().split(" ", 1) for part in ddl.split(",")]
    return Schema([ColSpec(_ddl_type(kind), name) for name, kind in cols])


def signature(spec: dict[str, Any], example: pd.DataFrame, output: pd.DataFrame):
    """The model's signature, declared instead of inferred: inputs are the example's columns (pixels and
    log-mel frames as binary, raw text as string), outputs the task's ``output_schema``. Inferring gave
    the "integer column(s)" hint for the ``prediction`` output and read nothing the task does not state.
    ``output`` (the model's answer on ``example``) must have exactly the declared columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    from ..models.tasks import task_class

    unknown = [c for c in example.columns if c not in _INPUT_TYPES]
    if unknown:
        raise ValueError(f"no signature type for input column(s) {unknown}; known: {sorted(_INPUT_TYPES)}")
    inputs = Schema([ColSpec(getattr(DataType, _INPUT_TYPES[c]), c) for c in example.columns])
    outputs = output_schema(task_class(spec["task"]).output_schema)
    if sorted(output.columns) != sorted(outputs.input_names()):
        raise ValueError(f"the {spec['task']} model answers with columns {list(output.columns)}, but its task declares "
                         f"{outputs.input_names()} (the task's output_schema in models/tasks/)")
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """What loading the model needs, pinned to what logged it, as PyPI serves them: the local-version
    tag of a CPU torch wheel (``+cpu``) dropped; no sparkzoo (its code travels with the model)."""
    import mlflow
    import numpy
    import pyarrow
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}", f"pyarrow=={pyarrow.__version__}"]

