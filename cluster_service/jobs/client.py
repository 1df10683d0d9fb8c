"""Ray's JobSubmissionClient with Ray 2.60's token auth set up and its failures turned into user errors.

Ray 2.60 starts clusters with token authentication on, but a client only sends its token when
RAY_AUTH_MODE=token is set in its own process. So when the user has not chosen a mode and a token is
available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), we switch token mode on, the
way ``ray.init`` does for a local cluster. A head started with RAY_AUTH_MODE=disabled ignores the header.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

AUTH_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the cluster's token "
             "(`ray get-auth-token` on the head prints it), or start the head with RAY_AUTH_MODE=disabled")


def default_address() -> str | None:
    """The dashboard address from the environment, as the Ray CLI reads it."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def _use_token_if_available() -> None:
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # Ray before 2.52 has no token auth
        return

    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")  # make this process see the mode change, as ray.init does


@contextmanager
def user_errors(address: str):
    """Unreachable dashboards, refused tokens and unknown jobs become one-line user errors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise UserError(f"{address}: Ray authentication failed ({first}); {AUTH_HELP}") from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise UserError(f"{address}: cannot reach the Ray dashboard ({type(exc).__name__}); check the "
                        "address (http://HOST:8265) and that the head runs with the dashboard") from None
    except RuntimeError as exc:  # the SDK reports HTTP errors (unknown job, bad request) as RuntimeError
        raise UserError(f"{address}: {str(exc).strip().splitlines()[0]}") from None


def job_client(address: str | None) -> JobSubmissionClient:
    address = address or default_address()
    if not address:
        raise UserError("--address: give the Ray dashboard address (http://HOST:8265) or set RAY_API_SERVER_ADDRESS")
    _use_token_if_available()
    from ray.job_submission import JobSubmissionClient

    with user_errors(address):
        return JobSubmissionClient(address)
