"""Meeting users where they are: any network shared (``share``), config files, ONNX and
TorchScript export, TensorBoard logs and run listings."""

from hfsnet.models.share import SharedClassifier, ShareError, share, tappable_layers

__all__ = ["ShareError", "SharedClassifier", "share", "tappable_layers"]
