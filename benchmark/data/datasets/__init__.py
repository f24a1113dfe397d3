"""Datasets the streams are built from, each a registered :class:`DatasetSpec`.

``cifar100`` (torchvision pickles), ``imr``/``ima``/``vtab`` (APER folder trees) and the built-in ``digits``.
Importing this package registers them; heavy libraries (torchvision, scikit-learn) load only when data does.
"""
from benchmark.data.datasets.images import ArrayImages, FileImages, ImageSource, LabelledImages, RawData
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts
from benchmark.data.datasets import cifar100, digits, folders  # noqa: F401  (registers the datasets)

__all__ = ["ArrayImages", "DatasetSpec", "FileImages", "ImageSource", "LabelledImages", "RawData",
           "ReferenceCounts"]
