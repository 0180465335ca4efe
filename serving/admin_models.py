"""The admin API's request and response bodies: validated strictly (unknown fields and wrong
types are 422s), and the source of its OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from sluicegate.processors.identity import (
    TENANT_ID_PATTERN,
)
from sluicegate.schemas.models import ApiKeyRecord, TenantRecord
from sluicegate.settings import Role

# -- request and response bodies -------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _whole(value: Any) -> Any:
    """JSON Schema counts 60.0 as an integer; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bounds before the validator, or pydantic leaves them out of the JSON Schema.
Requests = Annotated[int, Field(ge=1, le=10**9), BeforeValidator(_whole)]
Tokens = Annotated[int, Field(ge=1, le=10**12), BeforeValidator(_whole)]
Lifetime = Annotated[int, Field(ge=1, le=10 * 366 * 24 * 3600), BeforeValidator(_whole)]
Grace = Annotated[int, Field(ge=0, le=30 * 24 * 3600), BeforeValidator(_whole)]
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
Label = Annotated[str, StringConstraints(max_length=200)]
Pattern = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@*?-]{1,128}$")]
Patterns = Annotated[list[Pattern], Field(max_length=256)]
MAX_POLICY_CHARS = 256 * 1024
_ATTRIBUTE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
Attributes = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=_ATTRIBUTE_NAME)],
        Annotated[str, StringConstraints(max_length=256)],
    ],
    Field(max_length=64),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"type": "string", "pattern": _ATTRIBUTE_NAME},
            "additionalProperties": {"type": "string", "maxLength": 256},
        }
    ),
]


class Limits(_Body):
    """Rate limits and budgets; an absent or null field is unlimited."""

    requests_per_minute: Requests | None = None
    tokens_per_minute: Tokens | None = None
    usd_per_day: float | None = Field(default=None, gt=0, le=10**9, allow_inf_nan=False)
    usd_per_month: float | None = Field(default=None, gt=0, le=10**9, allow_inf_nan=False)


class TenantCreate(_Body):
    tenant_id: TenantId
    name: Label = ""
    allowed_models: Patterns = Field(default_factory=list)
    allowed_knowledge_bases: Patterns = Field(default_factory=list)
    attributes: Attributes = Field(default_factory=dict)
    limits: Limits | None = None


class TenantUpdate(_Body):
    """Only the fields sent change; `limits: null` removes the limits."""

    name: Label | None = None
    status: Literal["active", "disabled"] | None = None
    attributes: Attributes | None = None
    limits: Limits | None = None


class AccessUpdate(_Body):
    """Replaces the lists; an empty list means no restriction at this level."""

    allowed_models: Patterns = Field(default_factory=list)
    allowed_knowledge_bases: Patterns = Field(default_factory=list)


class KeyCreate(_Body):
    tenant_id: TenantId | None = Field(default=None, description="Default: the caller's tenant.")
    name: Label = ""
    roles: Annotated[list[Role], Field(min_length=1, max_length=4)] = ["developer"]
    allowed_models: Patterns = Field(default_factory=list)
    allowed_knowledge_bases: Patterns = Field(default_factory=list)
    attributes: Attributes = Field(default_factory=dict)
    limits: Limits | None = None
    expires_in_s: Lifetime | None = None


class KeyUpdate(_Body):
    """Only the fields sent change; `limits: null` removes the limits."""

    name: Label | None = None
    roles: Annotated[list[Role], Field(min_length=1, max_length=4)] | None = None
    attributes: Attributes | None = None
    limits: Limits | None = None


class KeyRotate(_Body):
    grace_s: Grace = Field(default=0, description="How long the old key keeps working (seconds).")


class PolicyUpdate(_Body):
    policy_yaml: str = Field(
        max_length=MAX_POLICY_CHARS,
        description="A YAML mapping; its optional `access` list holds ABAC rules.",
        examples=[
            "access:\n  - name: research-only\n    effect: deny\n    actions: [model:use]\n"
            "    resources: [gpt-4o]\n    unless: {department: research}\n"
        ],
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class LimitsView(BaseModel):
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


class TenantView(BaseModel):
    tenant_id: str
    name: str
    status: Literal["active", "disabled"]
    allowed_models: list[str]
    allowed_knowledge_bases: list[str]
    attributes: dict[str, str]
    limits: LimitsView | None
    revision: int

    @classmethod
    def of(cls, record: TenantRecord) -> TenantView:
        return cls.model_validate({**record.model_dump(), "status": record.status})


class TenantList(BaseModel):
    data: list[TenantView]


class KeyView(BaseModel):
    """A key without its secret (which is never stored) or its hash."""

    key_id: str
    tenant_id: str
    name: str
    roles: list[str]
    allowed_models: list[str]
    allowed_knowledge_bases: list[str]
    attributes: dict[str, str]
    limits: LimitsView | None
    status: Literal["active", "revoked"]
    created_at_ms: int
    expires_at_ms: int | None
    rotated_from: str | None
    revision: int

    @classmethod
    def of(cls, record: ApiKeyRecord) -> KeyView:
        return cls.model_validate(record.model_dump(exclude={"secret_hash"}))


class KeyList(BaseModel):
    data: list[KeyView]


class CreatedKey(BaseModel):
    key: KeyView
    api_key: str = Field(description="The key to send as `Bearer`; shown in this answer only.")


class RotatedKey(CreatedKey):
    previous: KeyView


class AccessView(BaseModel):
    allowed_models: list[str]
    allowed_knowledge_bases: list[str]
    tenant_allowed_models: list[str]
    tenant_allowed_knowledge_bases: list[str]
    effective_models: list[str] = Field(
        description="The catalogue's model aliases this key or tenant may use."
    )


class PolicyView(BaseModel):
    tenant_id: str
    version: str
    policy_yaml: str
    revision: int


class WhoAmI(BaseModel):
    tenant_id: str
    subject: str
    method: str
    api_key_id: str
    key_id: str | None
    name: str
    roles: list[str]
    allowed_models: list[str]
    tenant_allowed_models: list[str]
    allowed_knowledge_bases: list[str]
    tenant_allowed_knowledge_bases: list[str]
    attributes: dict[str, str]
    expires_at_ms: int | None
    operator: bool
