"""Progress on a terminal for slow CLI steps (downloads, GPU uploads, bench phases), with tqdm;
silent when stderr is not a terminal (piped, redirected, tests) or WEBRWKV_PROGRESS=0."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Callable, Sequence


def enabled() -> bool:
    """Whether to draw progress: stderr is a terminal and WEBRWKV_PROGRESS is not 0."""
    if os.environ.get("WEBRWKV_PROGRESS", "") == "0":
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class _Quiet:
    """A bar that draws nothing (no terminal, or tqdm is missing)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr (bytes are shown scaled: MB, GB), or a quiet stand-in."""
    if not enabled():
        return _Quiet()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Quiet()
    cols = min(shutil.get_terminal_size().columns, 100)  # 80 when the terminal does not say
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                leave=False, file=sys.stderr, ncols=cols, mininterval=0.2)


def status(text: str) -> None:
    """One line saying what is happening now, replaced by the next one (terminal only)."""
    if enabled():
        sys.stderr.write(f"\r\x1b[2K{text}" if text else "\r\x1b[2K")
        sys.stderr.flush()


class CountedSource:
    """A byte source whose reads advance a progress bar (HTTP downloads of a model)."""

    def __init__(self, src: Any, progress: Any, batch: int = 8 << 20) -> None:
        self._src, self._bar, self._batch = src, progress, batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._src, name)

    def read(self, offset: int, length: int) -> bytes:
        data = self._src.read(offset, length)
        self._bar.update(len(data))
        return data

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The ranges in batches of about `batch` bytes, so the bar moves while they download."""
        out: list[bytes] = []
        i = 0
        while i < len(ranges):
            j, size = i, 0
            while j < len(ranges) and (j == i or size + ranges[j][1] <= self._batch):
                size += ranges[j][1]
                j += 1
            got = self._src.read_ranges(ranges[i:j])
            self._bar.update(sum(len(b) for b in got))
            out += got
            i = j
        return out


def counted_upload(upload: Callable, progress: Any) -> Callable:
    """Wrap a Runtime upload hook so each matrix's fp16 bytes advance `progress`."""
    def up(dev: Any, m: Any, label: str, *args: Any, **kw: Any) -> Any:
        out = upload(dev, m, label, *args, **kw)
        shape = getattr(m, "shape", ())
        progress.update(2 * int(shape[0]) * int(shape[1]) if len(shape) == 2 else 0)
        return out
    return up
