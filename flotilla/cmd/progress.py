"""Pull and push progress: bars that redraw on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from flotilla.client import Progress

from ._base import human_size

FINAL = ("done", "exists", "unpacked", "failed")


@dataclass
class ProgressView:
    stream: TextIO = sys.stderr
    tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    rows: dict[str, Progress] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)   # blobs fetched (or pushed): key -> size
    _drawn: int = 0
    _last: float = 0.0
    _started: float = field(default_factory=time.monotonic)

    def __call__(self, p: Progress) -> None:
        before = self.rows.get(p.key)
        self.rows[p.key] = p
        if p.status == "done" and "-sha256:" in p.key:
            self.moved[p.key] = p.total
        if not self.tty:
            if p.status in FINAL and (before is None or before.status != p.status):
                self.stream.write(f"{p.key}: {p.status} {human_size(p.total)}\n")
                self.stream.flush()
            return
        now = time.monotonic()
        if p.status in FINAL or now - self._last > 0.1:
            self._last = now
            self.draw()

    def _bar(self, p: Progress, width: int) -> str:
        frac = 1.0 if p.status in ("done", "exists", "unpacking", "unpacked") else (
            p.offset / p.total if p.total else 0.0)
        filled = int(frac * width)
        return "[" + "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1) + "]"

    def draw(self) -> None:
        cols = shutil.get_terminal_size((100, 20)).columns
        lines = []
        for p in self.rows.values():
            name = p.key[:28].ljust(28)
            shown = p.offset if p.status in ("waiting", "downloading", "uploading") else p.total
            size = f"{human_size(shown)}/{human_size(p.total)}"
            lines.append(f"{name} {p.status:<11} {self._bar(p, max(10, cols - 70))} {size}"[:cols - 1])
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F")
        for line in lines:
            self.stream.write("\x1b[2K" + line + "\n")
        self._drawn = len(lines)
        self.stream.flush()

    def finish(self, what: str, verb: str = "fetched") -> None:
        if self.tty:
            self.draw()
        total = sum(self.moved.values())
        elapsed = time.monotonic() - self._started
        self.stream.write(f"{what}: {verb} {human_size(total)} in {elapsed:.1f}s\n")
        self.stream.flush()
