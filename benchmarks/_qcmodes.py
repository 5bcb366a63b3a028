"""qcompress's side of benchmarks/frontier.py: every mode the CLI offers at run time.

Why through the CLI: the modes land on several branches at once, and the command line is the
contract they share. Each mode is a list of ``qcompress quantize`` arguments, run in-process
(click's runner: one import, no start-up per point) on a safetensors file of the data set with
``--jobs 1 --min-elements 0 --json``. A mode whose option the installed CLI does not have is
skipped with a note, found by asking the command itself for its options (feature detection,
never a version check). GGUF exports run ``qcompress export --to gguf --type T`` and are read
back with gguf-py.

Measured per point, from the files written, not from the report's claims:
- ``bpw``: the bytes of every stored tensor of the artifact except the ``__qcompress__``
  bookkeeping tensors, x 8 / weights (the budget's own accounting); ``file_bpw``: the whole file;
- SQNR and max |error|: the artifact decoded by ``api.dequantize_file`` to float32 against the
  input; lossless modes are checked byte for byte against the input's bytes instead;
- encode MB/s: input bytes (float32, or bfloat16 for a bfloat16 input) / the report's
  ``elapsed_seconds`` (file to artifact, one thread, hashing included); decode MB/s: the same
  bytes / the timed ``dequantize_file`` (artifact to file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _peers import (
    Point,
    Tensors,
    bits_per_weight,
    error_sums,
    sqnr_db,
    to_bfloat16_bits,
    weight_count,
)

BOOKKEEPING_PREFIX = "__qcompress__"
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclasses.dataclass(frozen=True)
class Mode:
    """One qcompress setting: its label, its ``quantize`` arguments, the options it needs."""

    label: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()
    fixed_rate: bool = False
    bound: float | None = None
    lossless: bool = False


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype, shape, raw bytes) of every tensor; ``__metadata__`` left out."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), blob[base + start : base + end])
    return out


def write_safetensors(path: Path, tensors: Tensors, dtype: str = "F32") -> None:
    """The data set as one safetensors file (written by hand: the numpy adapter has no
    bfloat16); ``BF16`` stores the bfloat16 rounding of the values."""
    raws = [to_bfloat16_bits(x).tobytes() if dtype == "BF16" else x.tobytes() for _, x in tensors]
    header, offset = {}, 0
    for (name, x), raw in zip(tensors, raws, strict=True):
        header[name] = {
            "dtype": dtype,
            "shape": list(x.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for raw in raws:
            f.write(raw)


def stored_tensor_bytes(artifact: Path) -> int:
    """Bytes of the artifact's stored tensors, not its header nor its bookkeeping tensors."""
    return sum(
        len(data)
        for name, (_, _, data) in read_safetensors(artifact).items()
        if not name.startswith(BOOKKEEPING_PREFIX)
    )


class QCompress:
    """Runs modes of the installed qcompress CLI on data sets; remembers what it lacks."""

    def __init__(self) -> None:
        from click.testing import CliRunner

        from qcompress.cli import cli

        self._cli = cli
        self._runner = CliRunner()
        self.notes: list[str] = []

    def options(self, command: str) -> dict[str, object]:
        """Option string -> its click parameter, for one command (what this build offers)."""
        import click

        cmd = self._cli.get_command(click.Context(self._cli), command)
        return {o: p for p in (cmd.params if cmd else []) for o in p.opts}

    def choices(self, command: str, option: str) -> tuple[str, ...]:
        param = self.options(command).get(option)
        return tuple(getattr(getattr(param, "type", None), "choices", ()) or ())

    def has(self, *options: str) -> bool:
        have = self.options("quantize")
        return all(o in have for o in options)

    def invoke(self, args: Sequence[str]) -> tuple[int, str, str]:
        result = self._runner.invoke(self._cli, list(args), catch_exceptions=True)
        err = result.stderr if result.stderr_bytes is not None else ""
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            err += f"{type(result.exception).__name__}: {result.exception}"
        return result.exit_code, result.stdout, err

    def quantize(
        self, dataset: str, tensors: Tensors, mode: Mode, work: Path, dtype: str = "F32"
    ) -> Point | None:
        """One mode on one data set, or None (and a note) where the CLI lacks it or refuses."""
        missing = [o for o in mode.needs if not self.has(o)]
        if missing:
            self.notes.append(f"qcompress: no {' '.join(missing)} in this CLI: its modes skipped")
            return None
        src = work / f"{dataset}.{dtype.lower()}.safetensors"
        if not src.exists():
            write_safetensors(src, tensors, dtype)
        art = work / "a.qc.safetensors"
        code, out, err = self.invoke(
            [
                "quantize",
                str(src),
                "-o",
                str(art),
                "--report",
                str(work / "a.qc.json"),
                "--force",
                "--quiet",
                "--json",
                "--jobs",
                "1",
                "--min-elements",
                "0",
                *mode.args,
            ]
        )
        if code != 0:
            first = (err.strip() or out.strip()).splitlines()[-1:] or ["no message"]
            self.notes.append(f"qcompress {mode.label} on {dataset}: exit {code}: {first[0]}")
            return None
        report = json.loads(out)
        return self._score(dataset, tensors, mode, src, art, report, dtype)

    def _score(
        self,
        dataset: str,
        tensors: Tensors,
        mode: Mode,
        src: Path,
        art: Path,
        report: dict,
        dtype: str,
    ) -> Point:
        from qcompress import api

        n = weight_count(tensors)
        decoded = art.with_name("d.safetensors")
        t0 = time.perf_counter()
        api.dequantize_file(
            art, decoded, dtype="original" if mode.lossless else "float32", force=True
        )
        dec = time.perf_counter() - t0
        mb = n * (2 if dtype == "BF16" else 4) / 1e6  # the input's own bytes
        back = read_safetensors(decoded)
        if mode.lossless:
            given = read_safetensors(src)
            exact = all(back[k][2] == given[k][2] for k in given)
            sqnr, worst = (None if exact else -math.inf), 0.0
        else:
            pairs = [
                (x, np.frombuffer(back[name][2], np.float32).reshape(x.shape))
                for name, x in tensors
            ]
            signal, noise, worst = error_sums(pairs)
            sqnr = sqnr_db(signal, noise)
        elapsed = float(report.get("elapsed_seconds") or 0.0)
        # fixed-rate: what the report says each quantized tensor is, where it says it (the
        # variable-rate branch adds "mode"), and no entropy stage over the codes
        kinds = {t.get("mode") for t in report.get("tensors", []) if t.get("action") == "quantized"}
        if kinds and None not in kinds:
            fixed = kinds == {"fixed-rate"} and (mode.fixed_rate or not self.has("--entropy"))
        else:
            fixed = mode.fixed_rate
        return Point(
            dataset,
            "qcompress",
            f"qcompress {mode.label}" + (" (bf16 input)" if dtype == "BF16" else ""),
            bits_per_weight(stored_tensor_bytes(art), n),
            bits_per_weight(art.stat().st_size, n),
            sqnr,
            worst,
            mb / elapsed if elapsed > 0 else None,
            mb / dec if dec > 0 else None,
            bound=mode.bound,
            fixed_rate=fixed,
            lossless=mode.lossless,
            note=_mode_note(report),
        )

    def export_gguf(self, dataset: str, tensors: Tensors, qtype: str, work: Path) -> Point | None:
        """``qcompress export --to gguf --type T``, read back and decoded by gguf-py."""
        try:
            from gguf import GGUFReader
            from gguf.quants import dequantize
        except ImportError:
            self.notes.append("gguf not installed: no qcompress GGUF export points")
            return None
        src = work / f"{dataset}.f32.safetensors"
        if not src.exists():
            write_safetensors(src, tensors)
        out = work / "e.gguf"
        t0 = time.perf_counter()
        code, text, err = self.invoke(
            ["export", str(src), "--to", "gguf", "--type", qtype, "-o", str(out), "--force"]
        )
        enc = time.perf_counter() - t0
        if code != 0:
            first = (err.strip() or text.strip()).splitlines()[-1:] or ["no message"]
            self.notes.append(f"qcompress export {qtype} on {dataset}: exit {code}: {first[0]}")
            return None
        reader = GGUFReader(str(out))
        by_name = {t.name: t for t in reader.tensors}
        pairs, nbytes, used = [], 0, set()
        for name, x in tensors:
            t = by_name[name]
            nbytes += int(t.n_bytes)
            used.add(t.tensor_type.name)
            pairs.append((x, dequantize(t.data, t.tensor_type).reshape(x.shape)))
        signal, noise, worst = error_sums(pairs)
        n = weight_count(tensors)
        mb = sum(x.size * 4 for _, x in tensors) / 1e6
        note = "" if used == {qtype} else f"types stored: {', '.join(sorted(used))}"
        return Point(
            dataset,
            "qcompress",
            f"qcompress export {qtype}",
            bits_per_weight(nbytes, n),
            bits_per_weight(out.stat().st_size, n),
            sqnr_db(signal, noise),
            worst,
            mb / enc,
            None,
            fixed_rate=True,
            note=note,
        )


def _mode_note(report: dict) -> str:
    """What the report says was chosen, in a few words (bits per tensor, any mode field)."""
    bits = sorted({t.get("bits") for t in report.get("tensors", []) if t.get("bits")})
    kinds = sorted(
        {str(t[k]) for t in report.get("tensors", []) for k in ("mode", "codes") if t.get(k)}
    )
    parts = []
    if bits:
        parts.append("bits " + "/".join(str(b) for b in bits))
    if kinds:
        parts.append(", ".join(kinds))
    return "; ".join(parts)


def temp_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="qc-frontier-")
