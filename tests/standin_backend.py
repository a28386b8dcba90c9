"""A scoring backend with outputs of the right shapes, for tests whose subject is not the scoring."""

from __future__ import annotations

import time

import numpy as np


class StandInBackend:
    """Encoder and pair head outputs of the right shapes; `delay` seconds per encode of a real clip."""

    name = "stand-in"
    description = "stand-in (tests/standin_backend.py)"
    has_masks = False

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def encode(self, frames: np.ndarray, with_masks: bool = False) -> dict[str, np.ndarray]:
        if self.delay and frames.any():
            time.sleep(self.delay)
        return {"window_features": np.zeros((1, 9, 16), np.float32), "transitions": np.array([[30, 70]]),
                "transition_probs": np.zeros((1, 96, 2), np.float32), "static_tokens": np.zeros((1, 12, 8), np.float32)}

    def pair_head(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        k = len(feeds["exemplar_transitions"])
        delta = np.linspace(-1, 1, k).astype(np.float32)
        return delta, delta[:, None] * np.float32([0.3, 0.5, 0.2])

    def close(self) -> None:
        pass
