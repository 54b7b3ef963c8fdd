"""The decisions file: per-GOP QRO decisions as human-editable JSON (``--save-decisions``
writes it, ``--decisions`` re-applies it), written atomically and validated on load."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Mapping

from gopflow.errors import UsageError
from gopflow.fileio import atomic_write_bytes
from gopflow.qro.target import Decision

DECISIONS_VERSION = 1


def save_decisions(
    path: str | os.PathLike[str],
    decisions: Iterable[Decision] | Mapping[int, Decision],
    metric: str = "vmaf",
) -> None:
    """Write decisions (sorted by GOP index) as a human-editable JSON file, atomically: a
    temp file in the same directory, fsync, then ``os.replace``."""
    items = list(decisions.values()) if isinstance(decisions, Mapping) else list(decisions)
    items.sort(key=lambda d: d.gop_index)
    for before, after in itertools.pairwise(items):
        if before.gop_index == after.gop_index:
            raise UsageError(f"two decisions for GOP {after.gop_index}")
    document = {
        "version": DECISIONS_VERSION,
        "metric": metric,
        "gops": [d.to_dict() for d in items],
    }
    atomic_write_bytes(path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())


def load_decisions(path: str | os.PathLike[str]) -> dict[int, Decision]:
    """Read and validate a decisions file (as written by :func:`save_decisions`, possibly
    edited by hand) -> {GOP index: Decision}; a :class:`UsageError` names what is wrong."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UsageError(f"decisions file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read decisions file {path}: {error}") from error
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a JSON object with 'version', 'metric' and 'gops'")
    if document.get("version") != DECISIONS_VERSION:
        raise UsageError(
            f"{path}: unsupported decisions file version {document.get('version')!r} "
            f"(this gopflow reads version {DECISIONS_VERSION})"
        )
    if not isinstance(document.get("metric", "vmaf"), str):
        raise UsageError(f"{path}: 'metric' must be a metric name")
    gops = document.get("gops")
    if not isinstance(gops, list):
        raise UsageError(f"{path}: 'gops' must be a list of per-GOP decisions")
    decisions: dict[int, Decision] = {}
    for position, entry in enumerate(gops):
        decision = Decision.from_dict(entry, f"{path}: gops[{position}]")
        if decision.gop_index in decisions:
            raise UsageError(f"{path}: gops[{position}]: GOP {decision.gop_index} listed twice")
        decisions[decision.gop_index] = decision
    return decisions
