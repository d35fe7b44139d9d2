"""The source registry: a source registered from outside the package (here, this test module) is a valid
``data.source.kind`` in YAML and is prepared by the real prepare job into Parquet with a manifest, with
no edit to pipeline code; an unknown kind is a config error that lists the registered kinds."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from sparkzoo.pipelines import config, paths, prepare
from sparkzoo.pipelines.errors import ConfigError
from sparkzoo.pipelines.source_registry import SourceConfig, kinds, lookup, register_source, unregister_source

from .conftest import CONF, exp_overrides

SQUARES = {"dark": 40, "light": 220}   # class -> grey level of the square
PER_CLASS = 6
SIDE = 12                              # pixels of each toy PNG (the job resizes to data.image)


class ToySquares(SourceConfig):
    """Small PNGs named ``<class>_<n>.png``: one grey square each. Read on the driver (a handful of
    files) through the pipeline's file helpers and decoded by the shared image transform, then handed to
    Spark as rows of the image row contract."""

    suffix: str = ".png"

    def read(self, spark: Any, exp: Any, listing: list[dict[str, Any]], stack: Any) -> Any:
        from sparkzoo.pipelines.prepare.images import transform_image
        from sparkzoo.pipelines.prepare.rows import IMAGE_ROW_SCHEMA, image_rows
        from sparkzoo.pipelines.prepare.sources.files import local, read_bytes, relative

        chosen = [f["path"] for f in listing if f["path"].endswith(self.suffix)]
        settings = exp.data.image.model_dump(mode="json")
        ids, sources, pixels, labels = [], [], [], []
        names = sorted(SQUARES)
        for path in chosen:
            rel = relative(path, self.path)
            pix, _ = transform_image(read_bytes(path), "png", settings, rel, exp.seed)
            ids.append(f"{exp.data.dataset}/{rel}")
            sources.append(local(path))
            pixels.append(pix)
            labels.append(names.index(rel.split("_")[0]))
        frame = image_rows(ids, sources, "all", np.stack(pixels), np.array(labels), names, exp.data.val_fraction,
                           exp.data.test_fraction)
        return spark.createDataFrame(frame, schema=IMAGE_ROW_SCHEMA)


@pytest.fixture()
def toy_kind():
    """``toy_squares`` registered for one test: pytest imports every test module before it runs any, and
    sparkzoo's own lists (README, docs/PREPARE.md) must not see a test's toy."""
    made = register_source("toy_squares", "image")(ToySquares)
    yield made
    unregister_source("toy_squares")


@pytest.fixture()
def squares(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "squares"
    folder.mkdir()
    for name, grey in SQUARES.items():
        for n in range(PER_CLASS):
            img = np.full((SIDE, SIDE), 255 - grey, dtype=np.uint8)
            img[2 + n % 3:SIDE - 2, 2:SIDE - 2 - n % 3] = grey
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            (folder / f"{name}_{n}.png").write_bytes(buf.getvalue())
    return folder


def _yaml(tmp_path: Path, source: dict[str, Any]) -> Path:
    """An experiment file of its own (the fashion CNN's, with this source), as a user would write it."""
    tree = yaml.safe_load(CONF.read_text())
    tree["data"] = {**tree.get("data", {}), "dataset": "toy_squares", "source": source}
    out = tmp_path / "toy.yaml"
    out.write_text(yaml.safe_dump(tree))
    return out


def test_a_source_registered_later_is_a_valid_kind(toy_kind, squares, tmp_path):
    assert "toy_squares" in kinds() and lookup("toy_squares").modality == "image"
    exp = config.load(_yaml(tmp_path, {"kind": "toy_squares", "path": str(squares)}), exp_overrides(tmp_path))
    assert isinstance(exp.data.source, toy_kind) and exp.data.modality == "image"
    assert exp.to_dict()["data"]["source"] == {"kind": "toy_squares", "path": str(squares), "label_names": [],
                                               "suffix": ".png"}
    assert config.from_dict(exp.to_dict()).data.source == exp.data.source   # what executors and ranks rebuild
    with pytest.raises(ConfigError, match=r"unknown key 'data.source.sufix'.*did you mean 'suffix'"):
        config.load(_yaml(tmp_path, {"kind": "toy_squares", "path": str(squares), "sufix": ".jpg"}),
                    exp_overrides(tmp_path))


def test_unknown_kind_lists_the_registered_kinds(toy_kind, tmp_path):
    with pytest.raises(ConfigError) as err:
        config.load(_yaml(tmp_path, {"kind": "toy_circles", "path": str(tmp_path)}), exp_overrides(tmp_path))
    message = str(err.value)
    assert "unknown source kind 'toy_circles'" in message and "did you mean 'toy_squares'" in message
    for kind in ("idx", "image_folder", "text_table", "audio_splice", "toy_squares"):
        assert kind in message.split("registered kinds:")[1]


def test_the_prepare_job_prepares_a_toy_source(toy_kind, squares, tmp_path, spark):
    exp = config.load(_yaml(tmp_path, {"kind": "toy_squares", "path": str(squares)}),
                      exp_overrides(tmp_path, "data.max_records=null", "data.val_fraction=0.2",
                                    "data.test_fraction=0.2"))
    result = prepare.run(exp, spark)
    assert result.input_records == len(SQUARES) * PER_CLASS and result.quarantined == 0
    assert sum(result.rows.values()) == len(SQUARES) * PER_CLASS
    m = result.manifest
    assert m["source"]["kind"] == "toy_squares" and m["modality"] == "image" and m["task"] == "classification"
    assert m["label_names"] == sorted(SQUARES)
    assert m["shape"] == {"channels": exp.data.image.channels, "height": exp.data.image.height,
                          "width": exp.data.image.width}
    assert paths.is_complete(result.path)
    rows = [r for split in ("train", "val", "test") if result.rows[split]
            for r in pq.read_table(paths.join(result.path, split)).to_pylist()]
    assert len(rows) == len(SQUARES) * PER_CLASS
    for r in rows:
        assert m["label_names"][r["label"]] == r["label_name"] == r["id"].split("/")[-1].split("_")[0]
        assert len(r["image"]) == exp.data.image.height * exp.data.image.width * exp.data.image.channels
    again = prepare.run(exp, spark)   # same files, same config: the same version, and no work
    assert again.skipped and again.version == result.version
