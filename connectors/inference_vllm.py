"""The InferenceBackend adapter that runs a model in-process with vLLM, on the replica's GPUs.

A Ray Serve replica of a GPU pool (serving/ray_serve.py) builds one of these per deployment of
the pool; the engine is vLLM's `AsyncLLMEngine` (in vLLM v1 an alias of `AsyncLLM`), created
from the pool's `VllmEngineSettings` (model, quantization, tensor parallelism, prefix caching,
speculative decoding, GPU memory share). vLLM batches the concurrent requests of the replica
itself (continuous batching), so the worker's `inference_concurrency` is what fills a batch.

vllm is the optional `gpu` extra and is never imported with this module: the import happens in
the constructor, which raises `MissingDependencyError` when it is absent, so a CPU-only install
can import, configure and test everything around it. Tests inject an engine object instead
(`engine=`): only the engine's calls are faked, the prompt, sampling and output handling here
are the real ones.

The engine's outputs are cumulative (vLLM's default output kind): each `RequestOutput` carries
the whole text so far, so a stream sends the new suffix each time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

from sluicegate.connectors.openai_request import text_messages
from sluicegate.connectors.ports import Completion, Delta
from sluicegate.errors import BackendError, ConfigurationError
from sluicegate.schemas.models import ChatMessage, InferenceTask
from sluicegate.settings import Deployment, VllmEngineSettings

INSTALL_HINT = "pip install 'sluicegate[gpu]' (vllm needs a CUDA GPU)"
DEFAULT_MAX_TOKENS = 256


class MissingDependencyError(ConfigurationError):
    """An optional package a configured adapter needs is not installed."""

    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"{package} is not installed: {hint}")
        self.package = package
        self.hint = hint


def engine_args(settings: VllmEngineSettings) -> dict[str, Any]:
    """The keyword arguments of `AsyncEngineArgs`; unset options are left to vLLM's defaults."""
    args = settings.model_dump(exclude={"extra"}, exclude_none=True)
    return {**args, **settings.extra}


def sampling_kwargs(task: InferenceTask) -> dict[str, Any]:
    """The task's sampling as `vllm.SamplingParams` keywords."""
    params = task.params
    kwargs: dict[str, Any] = {
        "max_tokens": DEFAULT_MAX_TOKENS if params.max_tokens is None else params.max_tokens,
        "stop": list(params.stop),
    }
    for name in ("temperature", "top_p", "seed"):
        value = getattr(params, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def start_engine(settings: VllmEngineSettings) -> tuple[Any, Callable[..., Any]]:
    """A vLLM engine for these settings and vLLM's SamplingParams class; imports vllm."""
    try:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.engine.async_llm_engine import AsyncLLMEngine
    except ImportError as exc:
        raise MissingDependencyError("vllm", INSTALL_HINT) from exc
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args(settings)))
    return engine, SamplingParams


class VllmBackend:
    """Chat completions on an in-process vLLM engine (one engine per deployment)."""

    def __init__(
        self,
        *,
        deployment: Deployment,
        engine_settings: VllmEngineSettings,
        engine: Any | None = None,
        sampling_params: Callable[..., Any] | None = None,
    ) -> None:
        self._deployment = deployment
        if engine is None:
            engine, sampling_params = start_engine(engine_settings)
        self._engine = engine
        self._sampling_params = sampling_params or SimpleNamespace
        self._tokenizer: Any | None = None

    async def complete(self, task: InferenceTask) -> Completion:
        final = None
        async for output in self._generate(task):
            final = output
        if final is None:
            raise BackendError("vLLM returned no output", error_class="unknown")
        choice = final.outputs[0]
        return Completion(
            text=choice.text,
            finish_reason=_finish_reason(choice.finish_reason),
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=len(choice.token_ids),
            provider_model=self._deployment.provider_model,
        )

    async def stream(self, task: InferenceTask) -> AsyncIterator[Delta]:
        """Each output's new text, then one Delta with finish_reason and usage."""
        sent = 0
        final = None
        async for output in self._generate(task):
            final = output
            text = output.outputs[0].text
            if len(text) > sent:
                yield Delta(text=text[sent:])
                sent = len(text)
        if final is None:
            raise BackendError("vLLM returned no output", error_class="unknown")
        choice = final.outputs[0]
        yield Delta(
            text="",
            finish_reason=_finish_reason(choice.finish_reason),
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=len(choice.token_ids),
            provider_model=self._deployment.provider_model,
        )

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            shutdown()

    async def _generate(self, task: InferenceTask) -> AsyncIterator[Any]:
        """The engine's outputs for the task; an abandoned generation is aborted in vLLM, so
        a cancelled task (deadline, shutdown) frees its KV-cache blocks at once."""
        prompt = await self._prompt(task.messages)
        sampling = self._sampling_params(**sampling_kwargs(task))
        request_id = f"{task.request_id}-{task.attempt}-{uuid.uuid4().hex[:6]}"
        finished = False
        try:
            async for output in self._engine.generate(prompt, sampling, request_id):
                finished = bool(getattr(output, "finished", False))
                yield output
        except BackendError:
            raise
        except ValueError as exc:  # vLLM rejects prompts longer than max_model_len this way
            raise BackendError(
                f"vLLM refused the request: {exc}", error_class="bad_request"
            ) from exc
        except Exception as exc:
            raise BackendError(f"vLLM failed: {exc!r}", error_class="unknown") from exc
        finally:
            if not finished:
                await self._engine.abort(request_id)

    async def _prompt(self, messages: list[ChatMessage]) -> str:
        if self._tokenizer is None:
            self._tokenizer = await self._engine.get_tokenizer()
        rendered = self._tokenizer.apply_chat_template(
            text_messages(messages, reader="this vLLM engine"),
            tokenize=False,
            add_generation_prompt=True,
        )
        return str(rendered)


def _finish_reason(reason: str | None) -> str:
    """vLLM says "stop", "length" or "abort"; an unfinished output has None."""
    return reason if reason in ("stop", "length") else "stop"
