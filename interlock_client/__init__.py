"""A Python client of the Interlock API, blocking (`Client`, on urllib3) and asyncio
(`AsyncClient`, on aiohttp), with the same methods:

    from interlock_client import Client

    with Client("http://127.0.0.1:8080", token="dev-client-token") as client:
        job_id = client.submit("jobs/reminder", {"user": "ada"}).job_id
        print(client.wait(job_id, timeout=60)["status"])

Error answers raise `ApiError` subclasses carrying the API's JSON error (`status`, `code`,
`message`, `details`). Installed alone with `pip install 'interlock[client]'`: it imports
nothing of the server or the engine.
"""

from typing import TYPE_CHECKING, Any

from interlock_client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    WaitTimeout,
)
from interlock_client.models import (
    TERMINAL,
    Change,
    Event,
    Explanation,
    Job,
    JobStatus,
    JobSummary,
    Page,
    Progress,
    SubmitOptions,
    Submitted,
)
from interlock_client.sync import Client

if TYPE_CHECKING:
    from interlock_client.aio import AsyncClient


def __getattr__(name: str) -> Any:
    """AsyncClient on first use: aiohttp is most of the import time of the package, and
    the blocking client (and the `interlock` commands on it) does not need it."""
    if name == "AsyncClient":
        from interlock_client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TERMINAL",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Change",
    "Client",
    "ClientError",
    "Conflict",
    "Event",
    "Explanation",
    "Forbidden",
    "Job",
    "JobStatus",
    "JobSummary",
    "MethodNotAllowed",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "Progress",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailable",
    "SubmitOptions",
    "Submitted",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "WaitTimeout",
]
