"""Where credentials come from, and how they are kept out of logs.

A provider key is read from an environment variable, a file (Docker and Kubernetes mount
secrets as files), or HashiCorp Vault (KV v2, through `hvac`, the optional extra `vault`), in
that order of the settings that name them. Values are wrapped in SecretStr at once, so a repr
or a settings dump never shows them.

Logs are the other leak: an exception message can quote a header, a URL can carry a key. The
record factory installed by `install_log_redaction` rewrites every log record's message before
any handler sees it: known secret values (the settings' own) and anything shaped like a key
(sluicegate keys, provider keys, bearer tokens, JWTs, PEM blocks) become `[REDACTED]`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from sluicegate.errors import ConfigurationError

REDACTED = "[REDACTED]"
_MIN_SECRET_CHARS = 8  # shorter "secrets" (test placeholders) would redact ordinary words

# Shapes of credentials worth hiding even when their value is not known to this process.
SECRET_SHAPES = re.compile(
    "|".join(
        [
            r"sk-sg-[A-Za-z0-9]{12}_[A-Za-z0-9_-]{20,}",  # sluicegate keys
            r"\bsk-(?:proj-|ant-api\d\d-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
            r"\bxox[baprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
            r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API keys
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
            r"(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{8,}",  # whatever follows `Bearer `
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        ]
    )
)

_FORMATTER = logging.Formatter()

VaultReader = Callable[[str, str, str], str]
"""(mount point, path, field) → the value; the default uses hvac with VAULT_ADDR/VAULT_TOKEN."""


def _hvac_reader(mount: str, path: str, field: str) -> str:
    try:
        import hvac
    except ImportError as error:  # the `vault` extra is not installed
        raise ConfigurationError(
            "a Vault secret is configured but hvac is not installed "
            "(pip install 'sluicegate[vault]')"
        ) from error
    client = hvac.Client(url=os.environ.get("VAULT_ADDR"), token=os.environ.get("VAULT_TOKEN"))
    answer = client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount)
    return str(answer["data"]["data"][field])


def parse_vault_ref(ref: str) -> tuple[str, str, str]:
    """`<mount>/<path>#<field>` (KV v2), e.g. `secret/llm/openai#api_key`."""
    location, _, field = ref.partition("#")
    mount, _, path = location.partition("/")
    if not (mount and path and field):
        raise ConfigurationError(f"a Vault reference reads <mount>/<path>#<field>, not {ref!r}")
    return mount, path, field


def resolve_secret(
    *,
    env: str | None = None,
    file: Path | None = None,
    vault: str | None = None,
    vault_reader: VaultReader = _hvac_reader,
) -> SecretStr | None:
    """The first configured source that has a value; None when none is configured or set.

    A configured file or Vault entry that cannot be read is a ConfigurationError (a missing
    mount is a deployment mistake, not a key to go without); an unset variable is just unset.
    """
    if env:
        value = os.environ.get(env)
        if value:
            return SecretStr(value)
    if file is not None:
        try:
            text = file.read_text().strip()
        except OSError as error:
            raise ConfigurationError(f"cannot read the secret file {file}: {error}") from error
        if text:
            return SecretStr(text)
    if vault:
        return SecretStr(vault_reader(*parse_vault_ref(vault)))
    return None


def known_secrets(values: Any) -> set[str]:
    """Every SecretStr value inside a settings object (nested models, lists, dicts)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if len(secret) >= _MIN_SECRET_CHARS:
                found.add(secret)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(values)
    return found


class Redactor:
    """Rewrites text: known secret values first (longest first), then credential shapes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._known = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len)[::-1]

    def __call__(self, text: str) -> str:
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return SECRET_SHAPES.sub(REDACTED, text)


def install_log_redaction(secrets: Iterable[str] = ()) -> Redactor:
    """Make every log record of this process pass through a Redactor before any handler.

    A record factory rather than a Filter: filters on a logger do not see records propagated
    from its children, and handlers come and go (Faust installs its own); the factory sees all.
    """
    redactor = Redactor(secrets)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        clean = redactor(message)
        if clean != message or record.args:
            # (), not None: mode's formatter (Faust) wraps a None in a tuple and fails on it.
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # A traceback quotes exception messages; handlers format it later from exc_text.
            record.exc_text = redactor(_FORMATTER.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    return redactor
