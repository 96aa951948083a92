"""The door of the operator's API routes (`/admin/suppressions`, `/senders/check`): ADMIN_TOKEN
as a Bearer token, nothing else.

The dashboard's session cookie is not taken here: these are calls for scripts, and neither a
write nor a check that logs in to every sender's account may ride on a browser's cookie (a
cross-site `<img>` in a logged-in operator's browser would send it). A refused credential is
401, counted against AUTH_FAIL_LIMIT as every refused credential is; 429 past it.
"""

from __future__ import annotations

from flask import current_app

from mailservice.api.admin_auth import EXTENSION as ADMIN
from mailservice.api.admin_auth import AdminAuth
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.api.http_input import bearer_credential
from mailservice.errors import ApiError


def require_admin_token() -> None:
    """429 for a client past AUTH_FAIL_LIMIT; 401 unless ADMIN_TOKEN is the Bearer token."""
    check_client()
    admin: AdminAuth = current_app.extensions[ADMIN]
    if admin.token_matches(bearer_credential() or ""):
        return
    count_failure()
    raise ApiError(
        401,
        "This API needs the operator's credential: Authorization: Bearer <ADMIN_TOKEN>."
        if admin.enabled
        else "ADMIN_TOKEN is not set: the operator's API is closed.",
        headers={"WWW-Authenticate": 'Bearer realm="admin"'},
    )
