"""Remote sources, HTTP for DICOMweb and XNAT: a FetchContext -> a verifying requests session.

The session sends the context's credentials (a bearer token where allowed, else basic auth)
and verifies TLS with every request; ``get`` and ``http_errors`` map requests' exceptions and
error statuses to ours: 401/403 -> ``InputError`` (authentication), 5xx/408/429 and lost
connections -> ``Transient`` (retried), TLS failures -> ``InputError`` naming --ca-bundle.
Refuses: unverified TLS (``verify`` is never False). Messages are value-free: requests' own text
can carry URLs with UIDs and PatientIDs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from packager.errors import InputError
from packager.sources.remote.context import FetchContext, Transient
from packager.sources.remote.spec import ENV_CA_BUNDLE, ENV_PASSWORD, ENV_TOKEN, ENV_USER, RemoteSpec

if TYPE_CHECKING:  # optional dependency ("dcmpack[remote]"), imported where used
    import requests

log = logging.getLogger(__name__)

CHUNK: Final = 1 << 20


def http_session(context: FetchContext, *, bearer: bool) -> requests.Session:
    """A session with the context's credentials (bearer token if ``bearer``) and CA bundle."""
    import requests

    remote, creds, verify = context.remote, context.credentials, context.verify
    assert creds is not None and verify is not None  # resolved for the HTTP protocols

    class Session(requests.Session):
        """A requests Session that passes ``verify`` with every request.

        requests lets REQUESTS_CA_BUNDLE override a Session's own ``verify``
        (psf/requests#3829), which would silently drop ``--ca-bundle``.
        """

        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
            kwargs.setdefault("verify", verify)
            return super().request(method, url, *args, **kwargs)

    session = Session()
    session.verify = verify
    if bearer and creds.token:
        session.headers["Authorization"] = f"Bearer {creds.token}"
    elif creds.user is not None and creds.password is not None:
        session.auth = (creds.user, creds.password)
    if (
        (session.auth or "Authorization" in session.headers)
        and remote.http_base.startswith("http:")
        and not remote.is_loopback
    ):
        log.warning("%s: sending credentials over plain HTTP (not HTTPS)", remote.kind)
    return session


def http_status(remote: RemoteSpec, status: int) -> None:
    """Raise for an HTTP error status: auth is fatal, 5xx/408/429 transient, others returned."""
    if status in (401, 403):
        raise InputError(
            f"{remote.kind}: authentication failed (HTTP {status}) at "
            f"{remote.where}; check {ENV_USER}/{ENV_PASSWORD}"
            f"{'/' + ENV_TOKEN if remote.kind == 'dicomweb' else ''} or ~/.netrc"
        ) from None  # may run while a library error (URL text) is handled
    if status >= 500 or status in (408, 429):
        raise Transient(f"HTTP {status}", connection=False) from None


@contextlib.contextmanager
def http_errors(remote: RemoteSpec) -> Iterator[None]:
    """Map requests' exceptions to ours (value-free: their text can carry URLs with UIDs)."""
    import requests

    try:
        yield
    except requests.exceptions.SSLError:
        raise InputError(
            f"{remote.kind}: TLS verification failed at {remote.where}; give the "
            f"server's CA with --ca-bundle or {ENV_CA_BUNDLE}"
        ) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Transient(type(exc).__name__, connection=True) from None
    except requests.exceptions.ChunkedEncodingError as exc:  # connection lost mid-body
        raise Transient(type(exc).__name__, connection=True) from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        http_status(remote, status)
        hint = "; check the URL path" if status == 404 else ""
        raise InputError(f"{remote.kind}: the server answered HTTP {status} at {remote.where}{hint}") from None


def get(context: FetchContext, session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    """GET with our error mapping and timeout; the caller handles 4xx other than 401/403."""
    with http_errors(context.remote):
        response = session.get(url, timeout=context.timeout, **kwargs)
    http_status(context.remote, response.status_code)
    return response
