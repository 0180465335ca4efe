"""A fast, deterministic stand-in for the MiniLM embedder (the embedder port)."""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Hashed word counts, L2-normalised: texts that share words are close, others are not.

    `calls` records the batch sizes it was asked to embed; `fail_on` makes any batch holding
    that text raise (a server refusing one input)."""

    def __init__(
        self, *, model_name: str = "all-MiniLM-L6-v2", dimensions: int = 64, fail_on: str = ""
    ) -> None:
        self._model_name = model_name
        self._dimensions = dimensions
        self.fail_on = fail_on
        self.calls: list[int] = []

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise ValueError(f"refused: {self.fail_on}")
        matrix = np.zeros((len(texts), self._dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                slot = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest())
                matrix[row, slot % self._dimensions] += 1.0
            matrix[row, 0] += 0.01
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
