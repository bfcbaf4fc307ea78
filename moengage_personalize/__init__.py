"""moengage-personalize: the Python SDK for MoEngage Personalize.

Fetch experience metadata and experiences for users as ``concurrent.futures.Future``s, with the
mobile SDKs' names. See the README for the quickstart and the Flutter-to-Python mapping.
"""

from ._client import MoEngagePersonalize
from ._config import CircuitBreakerPolicy, PersonalizeConfig, RetryPolicy, User
from ._models import (
    DataSource,
    ExperienceCampaign,
    ExperienceCampaignFailure,
    ExperienceCampaignMeta,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceFailureReason,
    ExperienceStatus,
    FlushReport,
    Offering,
    PersonalizeStats,
)
from ._version import __version__
from .exceptions import (
    ClientClosedError,
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    NetworkError,
    ParseError,
    PersonalizeError,
    SDKDisabledError,
)

__all__ = [
    "CircuitBreakerPolicy",
    "ClientClosedError",
    "DataSource",
    "DeadlineExceededError",
    "ErrorCode",
    "ExperienceCampaign",
    "ExperienceCampaignFailure",
    "ExperienceCampaignMeta",
    "ExperienceCampaignsMetadata",
    "ExperienceCampaignsResult",
    "ExperienceFailureReason",
    "ExperienceStatus",
    "FlushReport",
    "HTTPStatusError",
    "MoEngagePersonalize",
    "NetworkError",
    "Offering",
    "ParseError",
    "PersonalizeConfig",
    "PersonalizeError",
    "PersonalizeStats",
    "RetryPolicy",
    "SDKDisabledError",
    "User",
    "__version__",
]
