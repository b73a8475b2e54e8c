"""Datasets for hfsnet: loading (image folders, CIFAR, MNIST-style IDX), caching, batching."""

from .augment import AugmentConfig
from .decode import read_image_file
from .errors import DataError, MixedSizesError
from .imageset import DataSplits, ImageSet, to_rgb
from .load import data_spec, load_dataset
from .loader import BatchLoader
from .stats import normalize

__all__ = [
    "AugmentConfig",
    "BatchLoader",
    "DataError",
    "DataSplits",
    "ImageSet",
    "MixedSizesError",
    "data_spec",
    "load_dataset",
    "normalize",
    "read_image_file",
    "to_rgb",
]
