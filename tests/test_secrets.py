"""Credentials: where they come from (env, file, Vault), that logs never show them, and the
bridge's TLS."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from sluicegate.errors import ConfigurationError
from sluicegate.secrets import (
    REDACTED,
    Redactor,
    install_log_redaction,
    known_secrets,
    parse_vault_ref,
    resolve_secret,
)
from sluicegate.serving.server import tls_context
from sluicegate.settings import BridgeSettings, Deployment, RegistrySettings, Settings
from tests.conftest import free_port

pytestmark = pytest.mark.unit

PROVIDER_KEY = "sk-proj-" + "Q" * 40


def test_sources_in_order_env_then_file_then_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "openai_key"
    secret_file.write_text("from-file\n")
    asked: list[tuple[str, str, str]] = []

    def vault(mount: str, path: str, field: str) -> str:
        asked.append((mount, path, field))
        return "from-vault"

    sources = {"env": "SG_TEST_KEY", "file": secret_file, "vault": "secret/llm/openai#api_key"}
    monkeypatch.setenv("SG_TEST_KEY", "from-env")
    assert resolve_secret(**sources, vault_reader=vault).get_secret_value() == "from-env"
    monkeypatch.delenv("SG_TEST_KEY")
    assert resolve_secret(**sources, vault_reader=vault).get_secret_value() == "from-file"
    del sources["file"]
    assert resolve_secret(**sources, vault_reader=vault).get_secret_value() == "from-vault"
    assert asked == [("secret", "llm/openai", "api_key")]
    assert resolve_secret(env="SG_TEST_KEY") is None


def test_a_configured_but_unreadable_source_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the secret file"):
        resolve_secret(file=tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="<mount>/<path>#<field>"):
        parse_vault_ref("secret-without-field")


def test_a_deployment_reads_its_key_from_a_mounted_secret(tmp_path: Path) -> None:
    mounted = tmp_path / "key"
    mounted.write_text(PROVIDER_KEY)
    deployment = Deployment(name="d", backend="openai", provider_model="m", api_key_file=mounted)
    assert deployment.api_key == SecretStr(PROVIDER_KEY)
    assert PROVIDER_KEY not in repr(deployment.api_key)


def test_known_secrets_are_collected_from_nested_settings() -> None:
    settings = Settings(registry=RegistrySettings(basic_auth=SecretStr("user:pa55word-x")))
    assert "user:pa55word-x" in known_secrets(settings)


def test_the_redactor_hides_known_values_and_credential_shapes() -> None:
    redact = Redactor(["hunter2-long-password"])
    text = (
        f"login hunter2-long-password with {PROVIDER_KEY}, "
        "Authorization: Bearer abc.def-ghi_123456, key sk-sg-ABCDEFGHJKLM_" + "x" * 43
    )
    clean = redact(text)
    assert "hunter2" not in clean and "sk-proj" not in clean and "abc.def" not in clean
    assert "sk-sg-ABCD" not in clean and clean.count(REDACTED) == 4
    assert redact("an ordinary line, 42 tokens") == "an ordinary line, 42 tokens"


@pytest.fixture
def captured() -> Iterator[list[str]]:
    """Formatted log output of a fresh logger, with the record factory restored afterwards."""
    previous = logging.getLogRecordFactory()
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("sluicegate.test.secrets")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(previous)


def test_log_records_are_redacted_before_any_handler_sees_them(captured: list[str]) -> None:
    install_log_redaction(["corp-vault-token-123"])
    log = logging.getLogger("sluicegate.test.secrets")
    log.info("calling upstream with key %s", PROVIDER_KEY)
    log.warning("vault said no to corp-vault-token-123")
    try:
        raise RuntimeError(f"401 from upstream for {PROVIDER_KEY}")
    except RuntimeError:
        log.exception("backend failed")
    output = "\n".join(captured)
    assert PROVIDER_KEY not in output and "corp-vault-token-123" not in output
    assert output.count(REDACTED) == 3
    assert "RuntimeError: 401 from upstream for" in output  # the traceback is still there


def test_redacted_records_still_format_under_fausts_log_formatter() -> None:
    """Faust's worker logs through mode's ExtensionFormatter, which re-wraps a record's args:
    a redacted record must still format there (it once lost every aiokafka line)."""
    from mode.utils.logging import ExtensionFormatter

    previous = logging.getLogRecordFactory()
    try:
        install_log_redaction()
        logger = logging.getLogger("sluicegate.test.secrets.mode")
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 1, "joined group %s", ("g1",), None
        )
    finally:
        logging.setLogRecordFactory(previous)
    assert ExtensionFormatter(stream=io.StringIO()).format(record).endswith("joined group g1")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_the_bridge_context_serves_https(tmp_path: Path) -> None:
    assert tls_context(BridgeSettings()) is None
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ConfigurationError):
        tls_context(BridgeSettings(tls_cert_file=cert))
    context = tls_context(BridgeSettings(tls_cert_file=cert, tls_key_file=key))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2

    app = web.Application()

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trusted) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/healthz")
        assert answer.json() == {"status": "ok"}
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await runner.cleanup()
