"""Progress bars: tqdm when it is installed, imported on use (not at package import), so the
library and the kernel tests run on a bare GPU image that lacks it."""
from __future__ import annotations


class _NullBar:
    """What a disabled bar does: counts, shows nothing (the attributes callers touch)."""

    def __init__(self, total=None, **_):
        self.total, self.n = total, 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, *_, **__) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(*, disable: bool = False, **kwargs):
    """A `tqdm.auto.tqdm(**kwargs)`, or a silent stand-in when `disable` is set. Asking for a
    visible bar without tqdm installed is an ImportError naming the package."""
    if disable:
        return _NullBar(**kwargs)
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install tqdm (a dependency of "
                          "onerec-kernels)") from e
    return tqdm(**kwargs)
