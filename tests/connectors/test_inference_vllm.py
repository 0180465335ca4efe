"""The vLLM adapter (connectors/inference_vllm.py) at the engine boundary.

vllm is not installed here (it needs a CUDA GPU): an engine object that behaves like
`AsyncLLMEngine` — cumulative `RequestOutput`s from `generate`, `abort`, `get_tokenizer` — is
injected, and everything between the task and the engine call is the adapter's own code.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sluicegate.connectors.inference_vllm import (
    MissingDependencyError,
    VllmBackend,
    VllmEngineSettings,
    engine_args,
)
from sluicegate.errors import BackendError, ConfigurationError
from sluicegate.schemas.models import SamplingParams
from sluicegate.settings import Deployment
from tests.builders import task

pytestmark = pytest.mark.unit

DEPLOYMENT = Deployment(name="llama-gpu", backend="openai", provider_model="meta/llama-3-8b")
ENGINE = VllmEngineSettings(model="meta/llama-3-8b")


@dataclass
class Choice:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Output:
    outputs: list[Choice]
    prompt_token_ids: list[int]
    finished: bool = False


class Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        assert kwargs == {"tokenize": False, "add_generation_prompt": True}
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@dataclass
class FakeEngine:
    """vLLM's engine surface: the words of `reply`, one output per word, cumulative."""

    reply: str = "hello from the gpu"
    fail_with: Exception | None = None
    calls: list[tuple[str, Any, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    shut_down: bool = False

    async def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def generate(self, prompt: str, sampling: Any, request_id: str) -> AsyncIterator[Output]:
        self.calls.append((prompt, sampling, request_id))
        if self.fail_with is not None:
            raise self.fail_with
        words = self.reply.split()
        for i in range(1, len(words) + 1):
            last = i == len(words)
            yield Output(
                outputs=[Choice(" ".join(words[:i]), list(range(i)), "length" if last else None)],
                prompt_token_ids=[1, 2, 3],
                finished=last,
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


def backend(engine: FakeEngine) -> VllmBackend:
    return VllmBackend(deployment=DEPLOYMENT, engine_settings=ENGINE, engine=engine)


async def test_complete_renders_the_chat_template_and_maps_the_final_output() -> None:
    engine = FakeEngine()
    t = task()
    t = t.model_copy(update={"params": SamplingParams(max_tokens=8, temperature=0.2, stop=["\n"])})
    completion = await backend(engine).complete(t)
    assert completion.text == "hello from the gpu"
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (3, 4)
    assert completion.provider_model == "meta/llama-3-8b"
    prompt, sampling, request_id = engine.calls[0]
    assert prompt == "<user>Say hi<assistant>"
    assert vars(sampling) == {"max_tokens": 8, "stop": ["\n"], "temperature": 0.2}
    assert request_id.startswith(f"{t.request_id}-1-")
    assert engine.aborted == []  # finished requests are not aborted


async def test_stream_sends_each_new_suffix_then_usage() -> None:
    deltas = [d async for d in backend(FakeEngine()).stream(task(stream=True))]
    assert "".join(d.text for d in deltas) == "hello from the gpu"
    assert [d.text for d in deltas[:2]] == ["hello", " from"]
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 4


async def test_a_stream_left_early_is_aborted_in_the_engine() -> None:
    engine = FakeEngine()
    stream = backend(engine).stream(task(stream=True))
    assert (await anext(stream)).text == "hello"
    await stream.aclose()
    # Closing the outer generator finalises the inner one, which aborts the request.
    import asyncio

    for _ in range(10):
        if engine.aborted:
            break
        await asyncio.sleep(0)
    assert engine.aborted == [engine.calls[0][2]]


@pytest.mark.parametrize(
    ("error", "error_class"),
    [(ValueError("prompt too long"), "bad_request"), (RuntimeError("CUDA OOM"), "unknown")],
)
async def test_engine_failures_become_backend_errors(error: Exception, error_class: str) -> None:
    with pytest.raises(BackendError) as caught:
        await backend(FakeEngine(fail_with=error)).complete(task())
    assert caught.value.error_class == error_class


async def test_aclose_shuts_the_engine_down() -> None:
    engine = FakeEngine()
    await backend(engine).aclose()
    assert engine.shut_down


def test_engine_args_come_from_the_pool_settings() -> None:
    settings = VllmEngineSettings(
        model="TheBloke/Llama-2-7B-AWQ",
        quantization="awq",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.45,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4},
        extra={"max_num_seqs": 64},
    )
    assert engine_args(settings) == {
        "model": "TheBloke/Llama-2-7B-AWQ",
        "quantization": "awq",
        "dtype": "auto",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.45,
        "enable_prefix_caching": True,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
        "max_num_seqs": 64,
    }


def test_importing_the_adapter_does_not_import_vllm() -> None:
    code = (
        "import sys, sluicegate.connectors.inference_vllm as m; "
        "assert 'vllm' not in sys.modules, 'vllm imported at module import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_vllm_the_constructor_raises_a_typed_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError
    with pytest.raises(MissingDependencyError) as caught:
        VllmBackend(deployment=DEPLOYMENT, engine_settings=ENGINE)
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.package == "vllm" and "sluicegate[gpu]" in str(caught.value)
