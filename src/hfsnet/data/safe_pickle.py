"""Unpickling the official CIFAR files without letting a pickle run code.

A pickle names the callables that rebuild its objects; a hostile one names ``os.system``. The
CIFAR files only need numpy's array-rebuilding trio, so that is all ``find_class`` will resolve.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

# numpy's array reconstructor, taken from how numpy itself pickles an array, so it is right for
# this numpy version whichever module it lives in.
_RECONSTRUCT = np.empty(0).__reduce__()[0]

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``ALLOWED`` and refuses every other one."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_loads(data: bytes) -> object:
    """Unpickle ``data`` (Python 2 str as bytes) with ``RestrictedUnpickler``."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
