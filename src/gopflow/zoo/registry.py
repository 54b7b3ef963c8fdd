"""The registry of shipped learned weights: model name -> file, sha256, architecture.

``src/gopflow/weights/registry.json`` (package data) looks like::

    {"format": 1,
     "models": {"dvp-3_4": {"file": "dvp-3_4.pt", "sha256": "...", "bytes": 12345,
                            "arch": {"class": "DvpDownscaler", "scale": "3/4", ...},
                            "metadata": "dvp-3_4.json"}, ...}}

Model names: ``dvp-<n>_<d>`` (Deep Video Precoding downscaler at scale n/d),
``vistra-up-<n>_<d>`` (ViSTRA decoder-side up-sampler for pictures coded at n/d) and
``vistra-interp`` (ViSTRA frame interpolator). Files are plain state dicts, loaded with
``torch.load(..., weights_only=True)`` (no pickled code) after their sha256 is checked
against the registry, so a swapped or corrupted file is refused rather than run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from gopflow.errors import ModelIntegrityError, ModelMissingError
from gopflow.fileio import atomic_write_json

REGISTRY_FORMAT = 1
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REGISTRY_NAME = "registry.json"


_ARCHITECTURES: dict[str, Callable[..., Any]] = {}
Model = TypeVar("Model")


def register_architecture(cls: type[Model]) -> type[Model]:
    """Class decorator: the registry's ``arch["class"]`` name ``cls.__name__`` builds ``cls``
    (its constructor takes the other ``arch`` entries as keyword arguments)."""
    _ARCHITECTURES[cls.__name__] = cls
    return cls


def build_model(arch: dict[str, Any]) -> Any:
    """A network from its registry ``arch`` description, by its registered class."""
    spec = dict(arch)
    name = spec.pop("class", None)
    if name not in _ARCHITECTURES:
        raise ModelIntegrityError(
            f"unknown network class {name!r}; registered: {sorted(_ARCHITECTURES)}"
        )
    return _ARCHITECTURES[name](**spec)


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry."""

    name: str
    file: str
    sha256: str
    arch: dict[str, Any]
    metadata: str | None = None

    def path(self, directory: Path) -> Path:
        return directory / self.file


def dvp_name(scale: Fraction) -> str:
    """Registry name of the DVP downscaler at ``scale`` (``dvp-3_4``)."""
    return f"dvp-{scale.numerator}_{scale.denominator}"


def upsampler_name(scale: Fraction) -> str:
    """Registry name of the ViSTRA up-sampler for pictures coded at ``scale``."""
    return f"vistra-up-{scale.numerator}_{scale.denominator}"


INTERPOLATOR_NAME = "vistra-interp"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _directory(directory: str | os.PathLike[str] | None) -> Path:
    return Path(directory) if directory is not None else WEIGHTS_DIR


def _read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; None if there is no file; unreadable: one-line error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{what} {path} is unreadable: {exc}") from exc


def read_registry(directory: str | os.PathLike[str] | None = None) -> dict[str, ModelEntry]:
    """All entries of the registry in ``directory`` (default: the package's)."""
    path = _directory(directory) / REGISTRY_NAME
    data = _read_json(path, "weights registry")
    if data is None:
        return {}
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise ModelIntegrityError(
            f"weights registry {path} has an unknown format (expected format {REGISTRY_FORMAT})"
        )
    entries = {}
    try:
        for name, item in data.get("models", {}).items():
            entries[name] = ModelEntry(
                name=name,
                file=str(item["file"]),
                sha256=str(item["sha256"]).lower(),
                arch=dict(item["arch"]),
                metadata=item.get("metadata"),
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelIntegrityError(f"weights registry {path} has a malformed entry: {exc}") from exc
    return entries


def has_model(name: str, directory: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``name`` is registered and its file is present (no hash check)."""
    entry = read_registry(directory).get(name)
    return entry is not None and entry.path(_directory(directory)).is_file()


def model_path(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The verified weights file of ``name``: registered, present, sha256 as recorded."""
    root = _directory(directory)
    entries = read_registry(root)
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none"
        raise ModelMissingError(
            f"no learned model named {name!r} in {root / REGISTRY_NAME} (registered: {known}); "
            "train one with `gopflow train precoder` and install it"
        )
    path = entry.path(root)
    if not path.is_file():
        raise ModelMissingError(f"weights of {name!r} are not installed: {path} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelIntegrityError(
            f"weights file {path} of {name!r} has sha256 {actual}, the registry records "
            f"{entry.sha256}: the file is corrupt or was modified; reinstall gopflow"
        )
    return path


def model_metadata(name: str, directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The training metadata (JSON) installed beside ``name``'s weights; ``{}`` if none."""
    root = _directory(directory)
    entry = read_registry(root).get(name)
    if entry is None or entry.metadata is None:
        return {}
    data = _read_json(root / entry.metadata, f"metadata of {name!r}")
    return data if isinstance(data, dict) else {}


def load_model(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    builder: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """The registered network ``name`` with its verified weights, in eval mode (CPU).
    ``builder`` makes the network from the registry's ``arch`` (default: the class registered
    under ``arch["class"]`` by :func:`register_architecture`)."""
    import torch

    path = model_path(name, directory)
    entry = read_registry(directory)[name]
    try:
        model = (builder or build_model)(entry.arch)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError, OSError) as exc:
        raise ModelIntegrityError(
            f"weights file {path} of {name!r} does not load into {entry.arch}: {exc}"
        ) from exc
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def install_model(
    name: str,
    weights: str | os.PathLike[str],
    arch: dict[str, Any],
    extra_files: tuple[str | os.PathLike[str], ...] = (),
    directory: str | os.PathLike[str] | None = None,
) -> ModelEntry:
    """Copy ``weights`` (and metadata/plots in ``extra_files``) into the registry directory
    and record the file's sha256; replaces an existing entry of the same name."""
    root = _directory(directory)
    root.mkdir(parents=True, exist_ok=True)
    source = Path(weights)
    target = root / f"{name}.pt"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    metadata = None
    for extra in extra_files:
        extra_path = Path(extra)
        destination = root / extra_path.name
        if extra_path.resolve() != destination.resolve():
            shutil.copyfile(extra_path, destination)
        if extra_path.suffix == ".json":
            metadata = extra_path.name
    entry = ModelEntry(name, target.name, sha256_file(target), dict(arch), metadata)
    entries = read_registry(root)
    entries[name] = entry
    # Keep other top-level sections (the mode predictor's hash) as they are.
    try:
        document = json.loads((root / REGISTRY_NAME).read_text())
    except FileNotFoundError:
        document = {}
    atomic_write_json(
        root / REGISTRY_NAME,
        {
            **document,
            "format": REGISTRY_FORMAT,
            "models": {
                key: {
                    "file": item.file,
                    "sha256": item.sha256,
                    "bytes": (
                        (root / item.file).stat().st_size if (root / item.file).is_file() else None
                    ),
                    "arch": item.arch,
                    "metadata": item.metadata,
                }
                for key, item in sorted(entries.items())
            },
        },
    )
    return entry
