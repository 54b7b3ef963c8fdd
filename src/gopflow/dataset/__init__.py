"""GOP-indexed video datasets: ``gopflow.dataset.open("clips.gfd/")`` reads exact frames of
any video in an archive written by ``gopflow dataset compress``, decoding only the GOPs a
clip needs, and hands clips to PyTorch (``to_torch``) or Ray Data (``to_ray``)."""

from __future__ import annotations

from gopflow.dataset.archive import Dataset


def open(root: str) -> Dataset:
    """The archive at ``root`` (a folder written by ``gopflow dataset compress``)."""
    return Dataset(root)


__all__ = ["Dataset", "open"]
