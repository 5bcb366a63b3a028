"""compressed-tensors export and reading back: numpy-only tests of the layout and the folder
contract, and (marked ``frameworks``) tests against transformers and the compressed-tensors
library themselves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qcompress.cli import main
from qcompress.errors import InputError, UsageError
from qcompress.exports.compressed_tensors import export_compressed_tensors
from qcompress.formats import open_weights
from qcompress.formats.base import TensorInfo
from qcompress.formats.compressed_tensors import pack_int32, unpack_int32
from qcompress.formats.safetensors import SafetensorsReader, write_safetensors

LINEARS = ("encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense")


def _checkpoint(folder: Path, nan: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {
        "embeddings.word_embeddings.weight": rng.normal(0, 0.02, (50, 64)).astype(np.float32),
        "embeddings.LayerNorm.weight": np.ones(64, np.float32),
        f"{LINEARS[0]}.weight": rng.normal(0, 0.02, (64, 64)).astype(np.float32),
        f"{LINEARS[0]}.bias": np.zeros(64, np.float32),
        f"{LINEARS[1]}.weight": rng.standard_t(3, (96, 64)).astype(np.float32),
        "odd.dense.weight": rng.normal(0, 1, (8, 40)).astype(np.float32),  # 40 % 32 != 0
    }
    if nan:
        tensors[f"{LINEARS[0]}.weight"][3, 5] = np.nan
    folder.mkdir(exist_ok=True)
    infos = [TensorInfo(n, a.shape, str(a.dtype)) for n, a in tensors.items()]
    write_safetensors(folder / "model.safetensors", infos, tensors.values(), {"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    return tensors


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_roundtrip_and_bit_order(bits: int, dim: int) -> None:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = np.random.default_rng(bits).integers(lo, hi + 1, (7, 45)).astype(np.int8)
    packed = pack_int32(codes, bits, dim)
    n = codes.shape[dim]
    assert packed.dtype == np.int32
    assert packed.shape[dim] == -(-n * bits // 32)
    assert np.array_equal(unpack_int32(packed, bits, n, dim), codes)


def test_pack_4bit_exact_word() -> None:
    # element i at bits 4i, offset by 8: codes -8..-1 give nibbles 0..7 -> 0x76543210
    word = pack_int32(np.arange(-8, 0, dtype=np.int8)[None, :], 4)
    assert word.tolist() == [[0x76543210]]


def test_export_layout_config_and_reader(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "src")
    out = tmp_path / "ct"
    res = export_compressed_tensors(tmp_path / "src", out, bits=4, group_size=32)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert cfg["model_type"] == "bert"
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["strategy"], w["group_size"], w["symmetric"]) == (4, "group", 32, True)
    assert qc["ignore"] == ["embeddings.word_embeddings", "odd.dense"]
    assert (out / "tokenizer.json").read_text() == '{"vocab": {}}'
    with SafetensorsReader(out / "model.safetensors") as r:
        stored = {i.name: i for i in r.tensor_infos()}
        assert r.read(f"{LINEARS[0]}.weight_shape").tolist() == [64, 64]
    assert stored[f"{LINEARS[0]}.weight_packed"].shape == (64, 8)
    assert stored[f"{LINEARS[0]}.weight_packed"].dtype == "int32"
    assert stored[f"{LINEARS[1]}.weight_scale"].shape == (96, 2)
    assert f"{LINEARS[0]}.weight" not in stored and "odd.dense.weight" in stored
    quantized = {e.name: e for e in res.tensors if e.action == "quantized"}
    assert set(quantized) == {f"{m}.weight" for m in LINEARS}
    with open_weights(out) as reader:
        assert reader.format == "compressed-tensors"
        for name, e in quantized.items():
            x, xh = src[name], reader.read(name)
            assert xh.shape == x.shape and xh.dtype == np.float32
            mse = float(np.mean((x.astype(np.float64) - xh) ** 2))
            assert mse == pytest.approx(e.error.mse, rel=1e-9)
            assert e.error.sqnr_db > 17
        assert np.array_equal(reader.read("odd.dense.weight"), src["odd.dense.weight"])


def test_export_asymmetric_8bit_channel(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "src")
    out = tmp_path / "ct8"
    res = export_compressed_tensors(
        tmp_path / "src" / "model.safetensors", out, bits=8, group_size=None, symmetric=False
    )
    assert res.format == "naive-quantized"
    with SafetensorsReader(out / "model.safetensors") as r:
        zp = r.read(f"{LINEARS[0]}.weight_zero_point")
        assert zp.dtype == np.int8 and zp.shape == (64, 1)
        assert r.read(f"{LINEARS[0]}.weight").dtype == np.int8
    with open_weights(out) as reader:
        x = src[f"{LINEARS[1]}.weight"]
        xh = reader.read(f"{LINEARS[1]}.weight")
        sqnr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((x - xh) ** 2))
        assert sqnr > 35


def test_same_input_same_bytes(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "src")
    export_compressed_tensors(tmp_path / "src", tmp_path / "a", bits=4, group_size=32)
    export_compressed_tensors(tmp_path / "src", tmp_path / "b", bits=4, group_size=32)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_sharded_input(tmp_path: Path) -> None:
    single = tmp_path / "single"
    src = _checkpoint(single)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = list(src)
    weight_map = {}
    for k, part in enumerate((names[:3], names[3:])):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        infos = [TensorInfo(n, src[n].shape, "float32") for n in part]
        write_safetensors(sharded / shard, infos, [src[n] for n in part])
        weight_map |= dict.fromkeys(part, shard)
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "config.json").write_text((single / "config.json").read_text())
    export_compressed_tensors(single, tmp_path / "o1", bits=4, group_size=32)
    export_compressed_tensors(sharded, tmp_path / "o2", bits=4, group_size=32)
    written = json.loads((tmp_path / "o2" / "model.safetensors.index.json").read_text())
    assert written["weight_map"][f"{LINEARS[1]}.weight_packed"].startswith("model-00002")
    with open_weights(tmp_path / "o1") as a, open_weights(tmp_path / "o2") as b:
        assert [i.name for i in a.tensor_infos()] == [i.name for i in b.tensor_infos()]
        for i in a.tensor_infos():
            assert np.array_equal(a.read(i.name), b.read(i.name))


@pytest.mark.parametrize("sharded", [False, True])
def test_a_checkpoint_folder_is_compressed_tensors_not_a_sharded_checkpoint(
    tmp_path: Path, sharded: bool
) -> None:
    """``find_index`` leaves a compressed-tensors folder to its format, with an index of its
    own packed tensors or without one: ``open_input`` reads it decoded, and quantize refuses it
    in one line (it once read the index as plain sharded safetensors, or said the folder had no
    index)."""
    from qcompress.artifact.inputs import open_input
    from qcompress.formats.sharded import find_index

    src = _checkpoint(tmp_path / "src")
    if sharded:
        names = list(src)
        weight_map = {n: "model.safetensors" for n in names}
        index = {"metadata": {}, "weight_map": weight_map}
        (tmp_path / "src" / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "ct"
    export_compressed_tensors(tmp_path / "src", out, bits=4, group_size=32)
    assert (out / "model.safetensors.index.json").exists() == sharded
    assert find_index(out) is None
    with open_input(out) as opened:
        assert opened.format == "compressed-tensors"
        assert opened.read(f"{LINEARS[0]}.weight").dtype == np.float32  # decoded
    result = CliRunner().invoke(
        main, ["quantize", str(out), "-o", str(tmp_path / "q.qc.safetensors")]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "compressed-tensors checkpoint, quantized already" in result.stderr
    assert not (tmp_path / "q.qc.safetensors").exists()


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "src")
    _checkpoint(tmp_path / "bad", nan=True)
    with pytest.raises(UsageError, match="3/5/6/7-bit"):
        export_compressed_tensors(tmp_path / "src", tmp_path / "o", bits=3)
    with pytest.raises(InputError, match=rf"tensor '{LINEARS[0]}.weight'.*NaN"):
        export_compressed_tensors(tmp_path / "bad", tmp_path / "o", group_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "src"]  # no temp folder
    (tmp_path / "o").mkdir()
    with pytest.raises(UsageError, match="already exists; pass --force"):
        export_compressed_tensors(tmp_path / "src", tmp_path / "o", group_size=32)
    export_compressed_tensors(tmp_path / "src", tmp_path / "o", group_size=32, force=True)
    assert (tmp_path / "o" / "config.json").is_file()
    (tmp_path / "src" / "config.json").unlink()
    with pytest.raises(InputError, match=r"no config\.json"):
        export_compressed_tensors(tmp_path / "src", tmp_path / "o2")


def test_cli_reads_compressed_tensors(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "src")
    export_compressed_tensors(tmp_path / "src", tmp_path / "ct", bits=4, group_size=32)
    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(tmp_path / "ct"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["format"] == "compressed-tensors"
    shapes = {t["name"]: t["shape"] for t in doc["tensors"]}
    assert shapes[f"{LINEARS[1]}.weight"] == [96, 64]
    a = str(tmp_path / "src" / "model.safetensors")
    r = runner.invoke(main, ["compare", a, str(tmp_path / "ct"), "--json"])
    assert r.exit_code == 0, r.output
    rows = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    assert rows["odd.dense.weight"]["max_abs_error"] == 0
    assert rows[f"{LINEARS[0]}.weight"]["sqnr_db"] > 17
    out = tmp_path / "back.safetensors"
    r = runner.invoke(main, ["dequantize", str(tmp_path / "ct"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    with open_weights(out) as back, open_weights(tmp_path / "ct") as ct:
        for i in ct.tensor_infos():
            assert np.array_equal(back.read(i.name), ct.read(i.name))


# ---- against transformers and compressed-tensors -----------------------------------------------


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(cfg).eval()
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.frameworks
@pytest.mark.parametrize(
    ("bits", "group_size", "symmetric"),
    [(4, 32, True), (8, None, True), (4, 32, False), (2, 32, True), (8, None, False)],
)
def test_transformers_loads_and_library_decodes_the_same(
    bert, tmp_path: Path, bits: int, group_size: int | None, symmetric: bool
) -> None:
    import torch
    from transformers import AutoModel
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model, folder = bert
    out = tmp_path / "ct"
    res = export_compressed_tensors(
        folder, out, bits=bits, group_size=group_size, symmetric=symmetric
    )
    # transformers 5.24's compressed (run_compressed) path expects asymmetric zero-points
    # unpacked, as the library's own asymmetric pack-quantized checkpoints fail there too.
    kw = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    loaded, info = AutoModel.from_pretrained(out, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    ids = torch.randint(0, 120, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).last_hidden_state.flatten(1)
        got = loaded.eval()(ids).last_hidden_state.flatten(1)
    cos = torch.nn.functional.cosine_similarity(ref, got).min().item()
    assert cos > (0.99 if bits >= 4 else 0.9)
    decompressed = AutoModel.from_pretrained(
        out, quantization_config=CompressedTensorsConfig(dequantize=True)
    ).state_dict()
    quantized = [e.name for e in res.tensors if e.action == "quantized"]
    assert len(quantized) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output; pooler
    with open_weights(out) as reader:
        for name in quantized:
            assert np.array_equal(reader.read(name), decompressed[name].numpy()), name


@pytest.mark.frameworks
def test_float16_model_within_scale_rounding(bert, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model, _ = bert
    half = tmp_path / "half"
    model.half().save_pretrained(half)
    model.float()
    export_compressed_tensors(half, tmp_path / "ct", bits=4, group_size=32)
    with SafetensorsReader(tmp_path / "ct" / "model.safetensors") as r:
        assert r.read("pooler.dense.weight_scale").dtype == np.float16
    lib = AutoModel.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True)
    ).state_dict()
    with open_weights(tmp_path / "ct") as reader:
        mine = reader.read("pooler.dense.weight")
        theirs = lib["pooler.dense.weight"].to(torch.float32).numpy()
        # the library multiplies in float16: one float16 rounding of each product
        assert np.allclose(theirs, mine, rtol=2**-10, atol=0)
        assert not np.array_equal(mine, np.zeros_like(mine))
