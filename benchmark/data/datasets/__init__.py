"""Datasets the streams are built from, each a registered :class:`DatasetSpec`.

``cifar100`` (torchvision pickles), ``imr``/``ima``/``vtab``/``cub``/``objnet``/``omni`` (APER folder trees),
``domainnet`` (the release's domain folders and split lists) and the built-in ``digits``; datasets declared in
``<data-root>/<name>.clbench.toml`` files register when a data root is read (``declared``).
Importing this package registers the built-in ones; heavy libraries (torchvision, scikit-learn) load only when
data does.
"""
from benchmark.data.datasets import cifar100, digits, domainnet, folders  # noqa: F401  (registers the datasets)
from benchmark.data.datasets.images import ArrayImages, FileImages, ImageSource, LabelledImages, RawData
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts

__all__ = ["ArrayImages", "DatasetSpec", "FileImages", "ImageSource", "LabelledImages", "RawData",
           "ReferenceCounts"]
