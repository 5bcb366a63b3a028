"""The typed recipe (qcompress.artifact.recipe.Recipe) is the JSON the artifact stores, to the
byte: reading a recipe and writing it back gives the same canonical text, for every kind of
entry (8-bit, packed with float scales, second-level scales, kept, passed through)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from qcompress import api
from qcompress.artifact.reader import Artifact
from qcompress.artifact.recipe import Recipe, RecipeError, TensorRecipe, recipe_json
from qcompress.config import QuantizeOptions
from qcompress.errors import FormatError
from qcompress.formats import TensorInfo, write_weights


def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    arrays = {
        "w": rng.standard_normal((64, 128)).astype(np.float32),
        "b": rng.standard_normal(64).astype(np.float32),
        "steps": np.arange(6, dtype=np.int64),
    }
    path = tmp_path / "m.safetensors"
    infos = [TensorInfo(n, a.shape, str(a.dtype)) for n, a in arrays.items()]
    write_weights(path, "safetensors", infos, iter(arrays.values()))
    return path


@pytest.mark.parametrize(
    "options",
    [
        QuantizeOptions(),
        QuantizeOptions(bits=4),
        QuantizeOptions(bits=4, scale_bits=0),
        QuantizeOptions(bits=3, scheme="symmetric", granularity="channel"),
    ],
)
def test_recipe_round_trips_to_the_stored_text(tmp_path: Path, options: QuantizeOptions) -> None:
    out = api.quantize_file(model(tmp_path), options, output=tmp_path / "m.qc.safetensors")
    with Artifact(out.artifact) as art:
        text = art.recipe_text
        assert recipe_json(art.recipe.to_json()) == text
        assert recipe_json(Recipe.from_json(json.loads(text)).to_json()) == text
        actions = {e.name: e.action for e in art.entries}
        assert actions == {"w": "quantized", "b": "kept", "steps": "passthrough"}
        w = art.entries[0]
        assert w.quantized is not None and w.stored is None
        assert (w.quantized.scale_bits is None) == ('"scale_bits"' not in text)
        assert art.entries[1].stored_names == ["b"] and art.entries[1].quantized is None


def test_an_added_recipe_key_is_refused(tmp_path: Path) -> None:
    """A key no writer produces, added to an entry: the typed entry has no field for it, so
    the reader compares the raw JSON with the layout's and refuses the file in one line."""
    out = api.quantize_file(model(tmp_path), output=tmp_path / "m.qc.safetensors").artifact
    data = out.read_bytes()
    start = 8 + struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:start])
    recipe = json.loads(header["__metadata__"]["qcompress"])
    recipe["tensors"][1]["note"] = "added"
    header["__metadata__"]["qcompress"] = recipe_json(recipe)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[start:])
    with pytest.raises(FormatError, match="recipe entries are inconsistent"):
        Artifact(out)


def test_entry_json_round_trip_and_validation() -> None:
    entry = {"name": "b", "dtype": "float32", "shape": [4], "action": "kept", "reason": "r"}
    typed = TensorRecipe.from_json({**entry, "stored": "b"})
    assert typed.to_json() == {**entry, "stored": "b"}
    assert typed.info == TensorInfo("b", (4,), "float32")
    with pytest.raises(RecipeError, match="action 'sideways'"):
        Recipe.from_json({"tensors": [{**entry, "action": "sideways"}], "source": {}})
