"""Streaming reads of HF checkpoint files: tensor by tensor, memory-mapped, no PyTorch model."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Iterator

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, malformed, or does not fit the model."""


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value of a file, which must be a `kind` (e.g. an object); CheckpointError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err}); is the file truncated?") from err
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, "
                              f"got {type(value).__name__}")
    return value


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a .safetensors file and the byte offset where tensor data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > path.stat().st_size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header size {size} exceeds the file)")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: not a safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(path, name, info)
    return header, 8 + size


def _check_entry(path: Path, name: str, info: Any) -> None:
    """A header entry must give a known dtype, a shape and data offsets whose span fits shape x dtype."""
    if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
        raise CheckpointError(f"{path}: tensor {name!r} lacks dtype, shape or data_offsets in the header")
    if info["dtype"] not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {shape!r} or data_offsets {offsets!r}")
    size = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).itemsize
    if offsets[1] - offsets[0] != size:
        raise CheckpointError(f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes, but shape {shape} "
                              f"of {info['dtype']} needs {size}: the header is corrupt")


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) from one .safetensors file, reading one tensor at a time.

    Each tensor is read into its own buffer (not a memory map of the whole file), so resident memory
    holds one checkpoint tensor at a time, not every page of the file that was touched.
    """
    header, start = safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
            f.seek(start + begin)
            data = np.fromfile(f, dtype=np.uint8, count=end - begin)
            if data.size != end - begin:
                raise CheckpointError(f"{path}: tensor {name!r} is truncated")
            yield name, data.view(dtype).reshape(info["shape"])


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of an HF checkpoint folder: sharded (index), single safetensors, or pytorch_model.bin."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not (isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())):
            raise CheckpointError(f"{index}: no 'weight_map' object of tensor name -> shard file")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard(s) listed in the index are missing: {missing}")
        return files
    single = sorted(folder.glob("*.safetensors"))
    if single:
        return single
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise CheckpointError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin found")


def iter_tensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of a checkpoint folder, one at a time; a name seen twice is an error."""
    seen: set[str] = set()
    for path in checkpoint_files(folder):
        for name, array in (_read_torch_bin(path) if path.suffix == ".bin" else read_safetensors(path)):
            if name in seen:
                raise CheckpointError(f"{path}: tensor {name!r} appears more than once in the checkpoint")
            seen.add(name)
            yield name, array


def _read_torch_bin(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError as err:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs PyTorch (pip install torch)") from err
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    for name in list(state):
        tensor = state.pop(name)
        if tensor.dtype == torch.bfloat16:
            yield name, tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            yield name, tensor.numpy()
