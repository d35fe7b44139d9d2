"""The README and docs/ cannot go stale against the code: lists are checked against the registries.

What the README lists (commands, model families, source kinds, config keys) must equal what the code
registers; docs/PREPARE.md's source-kind table and docs/MODEL_ZOO.md's family tables likewise; every
relative link in README.md and docs/ must resolve to a file inside this repository; the README stays
short and its figures block holds a real run.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from .conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
SECTIONS = ("spark", "data", "prepare", "replicate", "model", "train", "mlflow", "score", "baseline", "ui")
# Dotted names that look like keys but are not: MLflow's Python API, and the run params train logs.
NOT_KEYS = ("mlflow.pytorch.", "mlflow.pyfunc.", "model.init_from_name", "model.init_from_version")


def _commands() -> set[str]:
    from sparkzoo.jobs.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _families() -> set[str]:
    from sparkzoo.models.registry import list_models

    return set(list_models())


def _source_kinds() -> set[str]:
    from sparkzoo.pipelines.source_registry import kinds

    return set(kinds())


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _sentence(text: str, start: str) -> str:
    """From ``start`` to the end of its sentence (a full stop at the end of a line)."""
    at = text.index(start)
    end = text.find(".\n", at)
    return text[at:end if end >= 0 else None]


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation allows (Optional, Union and Annotated unwrapped; data.source: every
    registered source kind's schema)."""
    from sparkzoo.pipelines.source_registry import SourceConfig, kinds, lookup

    if annotation is SourceConfig:
        return [lookup(kind).schema for kind in kinds()]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _is_mapping(annotation) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (dict, typing.Dict) or any(_is_mapping(a) for a in typing.get_args(annotation)
                                                if not isinstance(a, (str, int, types.NoneType)))


def _key_exists(model: type[BaseModel], parts: list[str]) -> bool:
    """``train.epochs`` and ``data.source.path`` resolve in the schema; a dict field takes any rest."""
    if not parts:
        return True
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    if _is_mapping(field.annotation):
        return True
    return any(_key_exists(m, parts[1:]) for m in _models_in(field.annotation))


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 160


def test_readme_command_table_is_the_cli():
    listed = set(re.findall(r"^\| `sparkzoo ([a-z-]+)", README.read_text(), re.M))
    assert listed == _commands(), f"README lists {sorted(listed)}, the CLI has {sorted(_commands())}"


def test_readme_families_are_the_registry():
    listed = set(_ticked(_sentence(README.read_text(), "Model families")))
    assert listed == _families(), f"README lists {sorted(listed)}, models/registry.py has {sorted(_families())}"


def test_readme_source_kinds_are_the_config_schema():
    listed = set(_ticked(_sentence(README.read_text(), "Source kinds:")))
    assert listed == _source_kinds(), f"README lists {sorted(listed)}, pipelines/config.py has {sorted(_source_kinds())}"


def test_every_config_key_the_readme_and_docs_name_exists():
    from sparkzoo.pipelines.config import Experiment

    wrong = []
    for page in [README, *DOCS]:
        for token in _ticked(page.read_text()):
            key = token.split("=", 1)[0].split(":", 1)[0].strip()
            if re.fullmatch(rf"(?:{'|'.join(SECTIONS)})\.[a-z_][a-z0-9_.]*", key) and \
                    not key.startswith(NOT_KEYS) and not _key_exists(Experiment, key.split(".")):
                wrong.append(f"{page.relative_to(ROOT)}: {token}")
    assert not wrong, "config keys that pipelines/config.py does not have:\n" + "\n".join(wrong)


def _table_names(page: Path, header: str) -> set[str]:
    """First-column names of every markdown table whose header row starts with ``| header |``."""
    names: set[str] = set()
    in_table = False
    for line in page.read_text().splitlines():
        if line.startswith(f"| {header} |"):
            in_table = True
            continue
        if in_table and line.startswith("|"):
            names |= set(_ticked(line.split("|")[1]))
        elif in_table:
            in_table = False
    return names


def test_prepare_doc_kind_table_is_the_config_schema():
    listed = _table_names(ROOT / "docs" / "PREPARE.md", "kind")
    assert listed == _source_kinds(), f"docs/PREPARE.md lists {sorted(listed)}, the schema has {sorted(_source_kinds())}"


def test_model_zoo_family_tables_are_the_registry():
    listed = _table_names(ROOT / "docs" / "MODEL_ZOO.md", "name")
    assert listed == _families(), f"docs/MODEL_ZOO.md lists {sorted(listed)}, the registry has {sorted(_families())}"


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for page in [README, *DOCS]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
        if "../shared" in page.read_text():
            broken.append(f"{page.relative_to(ROOT)}: mentions ../shared, which is not in this repository")
    assert not broken, "\n".join(broken)


def test_readme_figures_come_from_a_real_run():
    text = README.read_text()
    block = text.split("<!-- readme-figures:start -->", 1)[1].split("<!-- readme-figures:end -->", 1)[0]
    assert re.search(r"A real run on \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC \(\d+ CPU cores", block), block
    assert "sparkzoo run: done" in block and re.search(r"trained \w+: test accuracy 0\.\d{4}", block), block
