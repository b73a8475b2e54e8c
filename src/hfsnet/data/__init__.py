"""Datasets for hfsnet: loading (image folders, CIFAR, MNIST-style IDX) and caching."""

from .decode import read_image_file
from .errors import DataError
from .imageset import DataSplits, ImageSet
from .load import load_dataset
from .stats import normalize

__all__ = [
    "DataError",
    "DataSplits",
    "ImageSet",
    "load_dataset",
    "normalize",
    "read_image_file",
]
