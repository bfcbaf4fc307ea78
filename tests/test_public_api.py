"""The public surface: one curated __all__, the contract's names, enum strings and fallbacks."""

from __future__ import annotations

from types import ModuleType

import attrs

import moengage_personalize
from moengage_personalize import (
    DataSource,
    ErrorCode,
    ExperienceCampaign,
    ExperienceCampaignFailure,
    ExperienceCampaignMeta,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceFailureReason,
    ExperienceStatus,
    PersonalizeError,
)


def test_all_is_sorted_and_exports_exist() -> None:
    """__all__ is sorted, has no private names and every name resolves."""
    names = moengage_personalize.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(moengage_personalize, name) is not None
    public = {
        n
        for n in dir(moengage_personalize)
        if not n.startswith("_") and not isinstance(getattr(moengage_personalize, n), ModuleType)
    }
    assert public <= set(names)


def test_enum_values_are_the_mobile_strings() -> None:
    """Enum members carry the mobile SDKs' exact strings."""
    assert [s.value for s in ExperienceStatus] == ["active", "paused", "scheduled"]
    assert [s.value for s in DataSource] == ["CACHE", "NETWORK"]
    assert [r.value for r in ExperienceFailureReason] == [
        "USER_IN_CAMPAIGN_CONTROL_GROUP",
        "USER_IN_GLOBAL_CONTROL_GROUP",
        "USER_NOT_IN_SEGMENT",
        "INVALID_EXPERIENCE_KEY",
        "MAX_LIMIT_BREACHED",
        "EXPERIENCE_NOT_ACTIVE",
        "EXPERIENCE_EXPIRED",
        "PERSONALIZATION_FAILED",
    ]
    assert {c.value for c in ErrorCode} == {
        "NETWORK_ERROR",
        "HTTP_ERROR",
        "UNKNOWN_SERVER_ERROR",
        "PARSE_ERROR",
        "SDK_NOT_INITIALIZED",
        "SDK_DISABLED",
        "FEATURE_DISABLED",
        "UNKNOWN",
    }


def test_unknown_enum_input_falls_back() -> None:
    """Unknown strings fall back as the mobile SDKs do."""
    assert ExperienceStatus("Archived") is ExperienceStatus.ACTIVE
    assert ExperienceStatus("Paused") is ExperienceStatus.PAUSED
    assert DataSource("DISK") is DataSource.NETWORK
    assert ExperienceFailureReason("NEW_REASON") is ExperienceFailureReason.PERSONALIZATION_FAILED


def test_model_field_names_are_the_contracts() -> None:
    """Model classes are frozen attrs classes with the contract's field names."""
    fields = {
        ExperienceCampaignsMetadata: ["source", "experiences"],
        ExperienceCampaignMeta: ["experience_key", "experience_name", "status"],
        ExperienceCampaignsResult: ["experiences", "failures"],
        ExperienceCampaign: [
            "experience_key",
            "payload",
            "experience_context",
            "source",
            "raw_payload",
            "user",
            "offerings",
        ],
        ExperienceCampaignFailure: ["reason", "experience_keys"],
    }
    for cls, names in fields.items():
        assert [f.name for f in attrs.fields(cls)] == names
        assert cls.__setattr__ is not object.__setattr__  # frozen


def test_error_has_code_and_message() -> None:
    """PersonalizeError carries code and message; str() shows both."""
    err = PersonalizeError("boom", code=ErrorCode.NETWORK_ERROR)
    assert (err.code, err.message) == ("NETWORK_ERROR", "boom")
    assert str(err) == "[NETWORK_ERROR] boom"
    assert err.status_code is None
