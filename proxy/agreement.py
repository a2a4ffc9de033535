"""Rolling agreement over the last N decided comparisons (pure).

Count-based rather than time-based so a quiet route keeps its evidence and a
busy one reflects the present; errors and skips are not evidence either way.
"""

from __future__ import annotations

from collections import deque


class RollingAgreement:
    def __init__(self, size: int) -> None:
        self._window: deque[bool] = deque(maxlen=size)
        self._matches = 0

    def add(self, matched: bool) -> None:
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._matches -= 1
        window.append(matched)
        self._matches += matched

    def __len__(self) -> int:
        return len(self._window)

    @property
    def matches(self) -> int:
        return self._matches

    def ratio(self) -> float:
        """Matches over samples; 0.0 with no samples (the gauge must be a number)."""
        return self._matches / len(self._window) if self._window else 0.0
