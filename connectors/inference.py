"""Builds the InferenceBackend adapter a deployment of the catalogue names."""

from __future__ import annotations

from sluicegate.connectors.ports import InferenceBackend
from sluicegate.errors import ConfigurationError
from sluicegate.settings import Deployment


def build_backend(deployment: Deployment) -> InferenceBackend:
    """The adapter for `deployment.backend`; nothing connects or loads until the first call."""
    if deployment.backend == "openai" and deployment.client == "aiohttp":
        # The default for `openai`: the SDK's cost in CPU per call is ten times aiohttp's.
        from sluicegate.connectors.inference_openai_http import OpenAIHttpBackend

        return OpenAIHttpBackend(deployment=deployment)
    if deployment.backend in ("openai", "azure"):
        # `client: sdk`, and Azure OpenAI always: the OpenAI adapter over the SDK's Azure client
        # (URL and auth differ).
        from sluicegate.connectors.inference_openai import OpenAICompatibleBackend

        return OpenAICompatibleBackend(deployment=deployment)
    if deployment.backend == "anthropic":
        from sluicegate.connectors.inference_anthropic import AnthropicBackend

        return AnthropicBackend(deployment=deployment)
    if deployment.backend == "bedrock":
        # boto3 is the optional `bedrock` extra: imported only when a deployment needs it.
        try:
            from sluicegate.connectors.inference_bedrock import BedrockConverseBackend
        except ImportError as exc:
            raise ConfigurationError(
                f"deployment {deployment.name!r} needs boto3: pip install 'sluicegate[bedrock]'"
            ) from exc

        return BedrockConverseBackend(deployment=deployment)
    if deployment.backend == "llamacpp":
        from sluicegate.connectors.inference_llamacpp import LlamaCppBackend

        return LlamaCppBackend(deployment=deployment)
    raise ConfigurationError(
        f"deployment {deployment.name!r} names an unknown backend {deployment.backend!r}"
    )
