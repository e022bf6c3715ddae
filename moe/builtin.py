"""Models shipped inside the package, loaded by name: ``moe.from_pretrained("organism")``.

A built-in name is matched against a *string* argument only, exactly: ``"organism"`` is the built-in
organism (an HF OLMoE folder, `moe/organism/`) even where the working directory holds a folder called
``organism``; ``"./organism"``, an absolute path or a `pathlib.Path` always name a local folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class Builtin(NamedTuple):
    folder: Path
    install: str  # what to do when the folder is not installed


BUILTIN_MODELS: dict[str, Builtin] = {
    "organism": Builtin(Path(__file__).parent / "organism", "run scripts/train_organism.py"),
}


def builtin_path(path: Any) -> Path | None:
    """The folder of the built-in model named by the string `path`, None if `path` is no built-in name;
    FileNotFoundError if that model is not installed (its folder has no config.json)."""
    if not isinstance(path, str) or path not in BUILTIN_MODELS:
        return None
    folder, install = BUILTIN_MODELS[path]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the built-in {path} is not installed ({folder} has no config.json): {install}")
    return folder


def organism_path() -> Path:
    """The folder of the built-in model organism (FileNotFoundError if it is not installed)."""
    return builtin_path("organism")
