"""A local Bot Framework: a token issuer (OpenID metadata, JWKS, client-credentials grant) and a Teams connector.

The issuer signs RS256 tokens with its own key: app tokens for the bot's calls to the
connector (after checking the app id and password), and the inbound tokens Teams puts on the
activities it posts to the bot (issuer, audience = the app id, ``serviceurl`` claim). The
connector checks every call's app token, keeps the activities it was sent (cards, updates,
thread replies) and answers member look-ups. Tests build ``adaptiveCard/action`` invokes as
Teams would and post them to the bot with a token of this issuer.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.peers import answer_json

APP_ID = "00000000-0000-4000-8000-00000000b075"
APP_PASSWORD = "teams-app-password-for-tests"
TENANT = "00000000-0000-4000-8000-0000000071e7"
CONNECTOR_AUDIENCE = "https://api.botframework.com"


@dataclass
class TeamsActivity:
    conversation: str
    id: str
    body: dict[str, Any]
    reply_to: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)

    def card(self) -> dict[str, Any] | None:
        for attachment in self.body.get("attachments") or []:
            if attachment.get("contentType") == "application/vnd.microsoft.card.adaptive":
                return attachment["content"]
        return None

    def actions(self) -> list[dict[str, Any]]:
        return (self.card() or {}).get("actions") or []

    def all_text(self) -> str:
        return json.dumps(self.body, ensure_ascii=False)


@dataclass
class FakeTeams:
    app_id: str = APP_ID
    app_password: str = APP_PASSWORD
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    activities: list[TeamsActivity] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    refused_calls: list[str] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)  # conversations the bot is not in: sending there fails

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = "keyturn-test-key"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # --- addresses the approval service is configured with ------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def service_url(self) -> str:
        return f"{self.base}/"

    @property
    def token_url(self) -> str:
        return f"{self.base}/botframework.com/oauth2/v2.0/token"

    @property
    def openid_url(self) -> str:
        return f"{self.base}/v1/.well-known/openidconfiguration"

    @property
    def issuer(self) -> str:
        return f"{self.base}/issuer"

    def add_member(
        self,
        user_id: str,
        aad_object_id: str,
        email: str | None,
        upn: str | None = None,
        *,
        role: str = "user",
        tenant: str = TENANT,
    ) -> None:
        """A conversation member as the connector returns it: ``userRole`` (``user``, ``guest``), the
        account's ``tenantId`` and its login name (``userPrincipalName``; a guest's reads ``…#EXT#@…``)."""
        self.members[user_id] = {
            "id": user_id,
            "name": user_id,
            "aadObjectId": aad_object_id,
            "email": email,
            "userPrincipalName": upn or email,
            "tenantId": tenant,
            "userRole": role,
        }

    # --- tokens -------------------------------------------------------------------------------

    def inbound_token(
        self, *, audience: str | None = None, service_url: str | None = None, expires_in: int | None = 3600, key=None
    ) -> str:
        """The token Teams puts on an activity it posts to the bot (``expires_in=None``: no ``exp``,
        which Teams never sends)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or self.service_url,
            "iat": now,
            "nbf": now,
            **({} if expires_in is None else {"exp": now + expires_in}),
        }
        return jwt.encode(claims, key or self._key, algorithm="RS256", headers={"kid": self._kid})

    def _app_token(self, scope: str) -> str:
        now = int(time.time())
        return jwt.encode(
            {
                "iss": self.issuer,
                "aud": CONNECTOR_AUDIENCE,
                "appid": self.app_id,
                "scp": scope,
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": self._kid},
        )

    def _app_token_valid(self, header: str) -> bool:
        try:
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=CONNECTOR_AUDIENCE,
                issuer=self.issuer,
            )
        except jwt.PyJWTError:
            return False
        return claims.get("appid") == self.app_id

    # --- what Teams does ----------------------------------------------------------------------

    def invoke(
        self,
        activity: TeamsActivity,
        verb: str,
        user: str,
        *,
        aad_object_id: str | None = None,
        inputs: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The ``adaptiveCard/action`` invoke Teams posts when ``user`` clicks ``verb`` on the card."""
        action = (
            next(a for a in activity.actions() if a.get("verb") == verb)
            if verb != "refresh"
            else (activity.card() or {})["refresh"]["action"]
        )
        return {
            "type": "invoke",
            "name": "adaptiveCard/action",
            "id": f"f:{uuid.uuid4()}",
            "channelId": "msteams",
            "serviceUrl": self.service_url,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from": {
                "id": user,
                "name": user,
                "aadObjectId": aad_object_id or self.members.get(user, {}).get("aadObjectId"),
            },
            "recipient": {"id": f"28:{self.app_id}", "name": "Keyturn"},
            "conversation": {"id": activity.conversation, "conversationType": "channel", "tenantId": TENANT},
            "replyToId": activity.id,
            "value": {
                "action": {
                    "type": "Action.Execute",
                    "verb": verb,
                    "data": {**action.get("data", {}), **(inputs or {})},
                },
                "trigger": "manual",
            },
        }

    def post(self, bot_url: str, activity: dict[str, Any], token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{bot_url}/api/messages", json=activity, headers=headers, timeout=30)

    def cards_about(self, action_id: str) -> list[TeamsActivity]:
        return [a for a in self.activities if a.reply_to is None and action_id in a.all_text()]

    def replies_to(self, activity: TeamsActivity) -> list[TeamsActivity]:
        return [a for a in self.activities if a.conversation == activity.conversation and a.reply_to == activity.id]

    # --- the server ---------------------------------------------------------------------------

    def start(self) -> FakeTeams:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._route("GET", b"")

            def do_POST(self) -> None:
                self._route("POST", self.rfile.read(int(self.headers.get("content-length") or 0)))

            def do_PUT(self) -> None:
                self._route("PUT", self.rfile.read(int(self.headers.get("content-length") or 0)))

            def _route(self, method: str, raw: bytes) -> None:
                answer_json(
                    self, *fake.handle(method, urlsplit(self.path).path, self.headers.get("authorization") or "", raw)
                )

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-teams").start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, method: str, path: str, authorization: str, raw: bytes) -> tuple[int, Any]:
        if path == "/v1/.well-known/openidconfiguration":
            return 200, {
                "issuer": self.issuer,
                "jwks_uri": f"{self.base}/v1/.well-known/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        if path == "/v1/.well-known/keys":
            jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
            return 200, {"keys": [{**jwk, "kid": self._kid, "use": "sig", "alg": "RS256"}]}
        if path == "/botframework.com/oauth2/v2.0/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            self.token_requests.append(form)
            if (
                form.get("grant_type") != "client_credentials"
                or form.get("client_id") != self.app_id
                or form.get("client_secret") != self.app_password
            ):
                return 401, {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                }
            return 200, {
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": self._app_token(form.get("scope", "")),
            }
        if not path.startswith("/v3/conversations/"):
            return 404, {"error": {"code": "NotFound"}}
        if not self._app_token_valid(authorization):
            self.refused_calls.append(path)
            return 401, {
                "error": {"code": "Unauthorized", "message": "Authorization has been denied for this request."}
            }
        with self._lock:
            return self._connector(method, unquote(path.removeprefix("/v3/conversations/")), json.loads(raw or b"{}"))

    def _connector(self, method: str, rest: str, body: dict[str, Any]) -> tuple[int, Any]:
        if rest.split("/", 1)[0] in self.unreachable:
            return 404, {"error": {"code": "ConversationNotFound", "message": "Conversation not found."}}
        if "/members/" in rest:
            conversation, _, user = rest.partition("/members/")
            member = self.members.get(user)
            return (200, member) if member else (404, {"error": {"code": "MemberNotFoundInConversation"}})
        conversation, _, activity_id = rest.partition("/activities")
        activity_id = activity_id.strip("/")
        if method == "POST" and not activity_id:  # send to the conversation; replyToId makes it a thread reply
            return self._store(conversation, body, body.get("replyToId"))
        existing = next((a for a in self.activities if a.conversation == conversation and a.id == activity_id), None)
        if existing is None:
            return 404, {"error": {"code": "ActivityNotFoundInConversation"}}
        if method == "PUT":
            existing.versions.append(existing.body)
            existing.body = body
            return 200, {"id": existing.id}
        return self._store(conversation, body, existing.id)

    def _store(self, conversation: str, body: dict[str, Any], reply_to: str | None) -> tuple[int, Any]:
        if body.get("type") != "message":
            return 400, {"error": {"code": "BadArgument", "message": "activity type must be message"}}
        activity = TeamsActivity(conversation, f"1:{next(self._ids)}", body, reply_to)
        self.activities.append(activity)
        return 201, {"id": activity.id}
