"""Builds the InferenceBackend adapter a deployment of the catalogue names."""

from __future__ import annotations

from sluicegate.connectors.ports import InferenceBackend
from sluicegate.errors import ConfigurationError
from sluicegate.settings import Deployment


def build_backend(deployment: Deployment) -> InferenceBackend:
    """The adapter for `deployment.backend`; nothing connects or loads until the first call."""
    if deployment.backend == "openai":
        from sluicegate.connectors.inference_openai import OpenAICompatibleBackend

        return OpenAICompatibleBackend(deployment=deployment)
    if deployment.backend == "llamacpp":
        from sluicegate.connectors.inference_llamacpp import LlamaCppBackend

        return LlamaCppBackend(deployment=deployment)
    raise ConfigurationError(
        f"deployment {deployment.name!r} names an unknown backend {deployment.backend!r}"
    )
