"""Import TensorFlow/Keras/tf2onnx without scikit-learn.

Keras imports its scikit-learn wrappers (`keras.src.wrappers`) at start-up whenever scikit-learn is
installed, which costs seconds and is never used by a conversion. Keras already copes with scikit-learn
missing (it catches the ImportError), so while the converter imports and runs, a meta path finder
answers `import sklearn` with ImportError:

    with without_sklearn():          # sys.meta_path = [_BlockSklearn, ...]
        import keras                 # keras.src.wrappers: sklearn = None
                                     # sys.meta_path restored, sklearn importable again

Nothing is blocked when scikit-learn is already imported (the caller wants it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.abc import MetaPathFinder

BLOCKED = "sklearn"


class _BlockSklearn(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - the importlib protocol
        if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
            raise ImportError(f"{fullname} is not imported while qpass converts a model")
        return None


@contextmanager
def without_sklearn() -> Iterator[None]:
    if BLOCKED in sys.modules:
        yield
        return
    finder = _BlockSklearn()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
