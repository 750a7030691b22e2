"""Who may talk to the review app, and how a page proves a change is its own.

- **Token.** Bound to a loopback address the app may run without one; bound to any
  other address it needs a token, given once as ``?token=...`` (then kept in an
  HttpOnly, SameSite=Strict cookie) or as ``Authorization: Bearer ...``. Anything else is
  refused with 401.
- **Host header.** On loopback, only ``localhost``/``127.0.0.1``/``[::1]`` host names are
  answered, so a web page cannot reach the app by DNS rebinding.
- **Cross-site requests.** Every state-changing request (anything but GET/HEAD) must
  carry the page's CSRF secret in ``X-CSRF-Token`` (a cross-site form cannot set a
  header, and the app answers no CORS preflight) and, when the browser sends an
  ``Origin``, come from the app's own origin.
- **Headers.** A content security policy allows only the app's own scripts, styles and
  images (no inline script), and the page cannot be framed.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from starlette.datastructures import URL
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from naturelens.errors import NaturelensError

TOKEN_COOKIE = "naturelens_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class ServeError(NaturelensError, ValueError):
    """The review app cannot start as asked."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: str | None) -> str | None:
    """The token the app will require: the given one, a new one beyond loopback, or none."""
    if token is not None and len(token) < 16:
        raise ServeError("the token must be at least 16 characters", "or omit it to get one")
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


class GuardMiddleware(BaseHTTPMiddleware):
    """Token, host and cross-site checks in front of every route (see module text)."""

    def __init__(self, app, token: str | None, csrf: str, loopback: bool):
        super().__init__(app)
        self.token = token
        self.csrf = csrf
        self.loopback = loopback

    async def dispatch(self, request: Request, call_next) -> Response:
        host = (request.url.hostname or "").lower()
        if self.loopback and host not in LOOPBACK_NAMES:
            return JSONResponse({"error": "unknown host name"}, status_code=421)
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and _same(given, self.token) and request.method == "GET":
                # Trade the token in the address for a cookie and drop it from the URL.
                clean = URL(str(request.url)).remove_query_params("token")
                resp = RedirectResponse(str(clean), status_code=303)
                resp.set_cookie(
                    TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/"
                )
                return resp
            bearer = request.headers.get("authorization", "")
            supplied = request.cookies.get(TOKEN_COOKIE) or (
                bearer[7:] if bearer.lower().startswith("bearer ") else None
            )
            if not _same(supplied, self.token):
                return JSONResponse(
                    {"error": "a token is required; open the address serve printed"},
                    status_code=401,
                )
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                return JSONResponse({"error": "cross-site request refused"}, status_code=403)
            if not _same(request.headers.get(CSRF_HEADER), self.csrf):
                return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
