"""The sluicegate exception tree, in one place so callers can catch at the right depth.

    SluicegateError                      root of everything raised on purpose
    ├── ConfigurationError               bad settings or catalogue; fail at start-up
    ├── SchemaError                      the event contract was violated
    │   ├── UnknownSchemaError           a wire record names a schema id nobody registered
    │   └── SerializationError           bytes that are not a valid record (magic byte, Avro)
    ├── RegistryError                    the schema registry refused or was unreachable
    ├── BrokerError                      Kafka refused or timed out (topic, retriable)
    │   └── BrokerAuthenticationError    the broker refused our SASL credentials (mechanism,
    │                                    username; never retriable: the same ones fail again)
    ├── AnalyticsError                   the analytics store (ClickHouse, chDB) failed (retriable)
    ├── BackendError                     an inference backend failed (error_class, status_code,
    │                                    retriable, retry_after_s) — mapped to InferenceFailed
    ├── IdempotencyError                 an Idempotency-Key cannot be honoured (status, code,
    │   │                                error_type, request_id of the key's first request)
    │   ├── IdempotencyKeyReused         422: the key belongs to a request with another body
    │   ├── IdempotencyKeyInUse          409: the request holding the key outlived this one's
    │   │                                timeout (retry later)
    │   └── IdempotencyUnavailable       503: the key could not be claimed (broker)
    └── AuthError                        a caller is not let in (code, status, error_type)
        ├── AuthenticationError          401: who is calling is not established
        │   ├── MissingCredentialsError      no API key or token (missing_api_key)
        │   ├── MalformedCredentialsError    not shaped like a key or a JWT (invalid_api_key)
        │   ├── UnknownKeyError              no such key, or the secret does not match
        │   │                                (invalid_api_key: the two are not told apart)
        │   ├── RevokedKeyError              the key was revoked (revoked_api_key)
        │   ├── ExpiredCredentialsError      the key or the token expired (expired_api_key,
        │   │                                expired_token)
        │   └── InvalidTokenError            a JWT failed verification (invalid_token)
        └── PermissionDeniedError        403: known caller, not allowed (rule, reason)
            └── TenantDisabledError          the caller's tenant is disabled or unknown

Flow-control signals are not errors: an event that cannot be processed is dead-lettered (see
`streams/dlq.py`) and the stream moves on.
"""

from __future__ import annotations


class SluicegateError(Exception):
    """Root of every exception sluicegate raises on purpose."""


class ConfigurationError(SluicegateError):
    """The settings or the model catalogue are inconsistent."""


class SchemaError(SluicegateError):
    """The event contract was violated."""


class UnknownSchemaError(SchemaError):
    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not registered")
        self.schema_id = schema_id


class SerializationError(SchemaError):
    """Bytes that do not decode as a record of the contract."""


class RegistryError(SluicegateError):
    """The schema registry refused a schema or could not be reached."""


class BrokerError(SluicegateError):
    def __init__(self, message: str, *, topic: str | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.topic = topic
        self.retriable = retriable


class BrokerAuthenticationError(BrokerError):
    """The broker refused the client's credentials (a wrong SASL password or user, a mechanism
    the listener does not enable). Raised at start-up instead of waiting out a metadata timeout
    that would only say "broker transport failure"; `retriable` is False."""

    def __init__(self, message: str, *, mechanism: str | None, username: str | None) -> None:
        super().__init__(message, retriable=False)
        self.mechanism = mechanism
        self.username = username


class AnalyticsError(SluicegateError):
    """The analytics store refused a statement or could not be reached.

    `retriable` is False for errors the same statement will hit again (bad SQL, unknown table).
    """

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class BackendError(SluicegateError):
    """An inference backend failed; `error_class` is the routing-relevant classification."""

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        status_code: int | None = None,
        retriable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.status_code = status_code
        self.retriable = retriable
        self.retry_after_s = retry_after_s


class IdempotencyError(SluicegateError):
    """An Idempotency-Key cannot be honoured. `status`, `code` and `error_type` are the HTTP
    answer; `request_id` is the request that holds or answered the key (None if unknown);
    `retry_after_s` is set when a retry with the same key may succeed."""

    status: int = 409
    code: str = "idempotency_error"
    error_type: str = "invalid_request_error"
    retry_after_s: float | None = None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class IdempotencyKeyReused(IdempotencyError):
    """422: the key was first used with another body; replaying that answer would be wrong."""

    status = 422
    code = "idempotency_key_reused"


class IdempotencyKeyInUse(IdempotencyError):
    """409: another request holds the key and had no answer within this request's timeout."""

    status = 409
    code = "idempotency_key_in_use"
    retry_after_s = 1.0


class IdempotencyUnavailable(IdempotencyError):
    """503: the claim on the key could not be written or read back; nothing was journaled."""

    status = 503
    code = "idempotency_unavailable"
    error_type = "server_error"
    retry_after_s = 1.0


class AuthError(SluicegateError):
    """A caller is not let in. `status` is the HTTP status, `code` the OpenAI-style error code,
    `error_type` the OpenAI-style error type; the message never contains a secret."""

    status: int = 401
    code: str = "invalid_api_key"
    error_type: str = "authentication_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class AuthenticationError(AuthError):
    """401: who is calling could not be established."""


class MissingCredentialsError(AuthenticationError):
    code = "missing_api_key"


class MalformedCredentialsError(AuthenticationError):
    code = "invalid_api_key"


class UnknownKeyError(AuthenticationError):
    """No such key, or the secret does not match it; callers cannot tell which."""

    code = "invalid_api_key"


class RevokedKeyError(AuthenticationError):
    code = "revoked_api_key"


class ExpiredCredentialsError(AuthenticationError):
    code = "expired_api_key"


class InvalidTokenError(AuthenticationError):
    code = "invalid_token"


class PermissionDeniedError(AuthError):
    """403: the caller is known but not allowed; `rule` names the rule that refused."""

    status = 403
    code = "permission_denied"
    error_type = "permission_error"

    def __init__(
        self, message: str, *, rule: str = "", reason: str = "", code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.rule = rule
        self.reason = reason or message


class TenantDisabledError(PermissionDeniedError):
    code = "tenant_disabled"
