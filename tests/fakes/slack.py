"""A local stand-in for the Slack Web API, and interaction payloads signed exactly as Slack signs them.

It answers the methods Keyturn calls (auth.test, chat.postMessage, chat.update,
chat.postEphemeral, users.info, views.open, conversations.history/replies/open) the way Slack
does — ``{"ok": false, "error": …}`` for a bad token, an unknown channel, an unknown message or
an unknown trigger — checks the payload shapes Slack would refuse (``block_problem``: block types,
text object types and limits, button ids), and records every call so tests can assert what people
would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.peers import answer_json

BLOCK_TYPES = {"header", "section", "context", "actions", "divider", "input", "image", "rich_text"}
TEXT_TYPES = {"plain_text", "mrkdwn"}
TEAM = "T0KEYTURN"


@dataclass
class SlackMessage:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None
    metadata: dict[str, Any] | None
    edits: int = 0

    def buttons(self) -> list[dict[str, Any]]:
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])]

    def all_text(self) -> str:
        """Everything a reader sees: the fallback text and every block's text."""
        return json.dumps([self.text, self.blocks], ensure_ascii=False)


@dataclass
class FakeSlack:
    """The fake workspace: its bot token, its people, its channels and every call made to it."""

    bot_token: str = "xoxb-keyturn-test"
    signing_secret: str = "8f742231b10e8888abcd99yyyzzz85a5"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    messages: list[SlackMessage] = field(default_factory=list)
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    triggers: set[str] = field(default_factory=set)
    known_channels: set[str] = field(default_factory=set)
    fail_next: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # --- the workspace ------------------------------------------------------------------------

    def add_user(self, user_id: str, email: str | None, **extra: Any) -> None:
        """A person as ``users.info`` returns them; ``extra`` sets what Slack flags, as Slack names it:
        ``is_restricted`` / ``is_ultra_restricted`` (guests), ``is_bot``, ``deleted``, ``is_stranger``,
        and ``team_id`` (another organisation's team for a Slack Connect user)."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": TEAM,
            "name": user_id.lower(),
            "deleted": False,
            "is_bot": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "profile": {"email": email} if email else {},
            **extra,
        }

    def add_channel(self, channel_id: str) -> None:
        self.known_channels.add(channel_id)

    @property
    def api_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(parse_qs(urlsplit(self.path).query))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if "json" in (self.headers.get("content-type") or ""):
                    args = json.loads(raw or b"{}")
                else:
                    args = parse_qs(raw.decode())
                args.update(parse_qs(urlsplit(self.path).query))
                self._answer(args)

            def _answer(self, args: dict[str, Any]) -> None:
                args = {
                    k: (v[0] if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str) else v)
                    for k, v in args.items()
                }
                method = urlsplit(self.path).path.rsplit("/", 1)[-1]
                token = (self.headers.get("authorization") or "").removeprefix("Bearer ") or args.pop("token", "")
                answer_json(self, 200, fake.handle(method, token, args), "application/json; charset=utf-8")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-slack").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the Web API --------------------------------------------------------------------------

    def handle(self, method: str, token: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append((method, args))
            if token != self.bot_token:
                return {"ok": False, "error": "invalid_auth"}
            if method in self.fail_next:
                return {"ok": False, "error": self.fail_next.pop(method)}
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            if handler is None:
                return {"ok": False, "error": "unknown_method"}
            return handler(args)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "team_id": TEAM, "user_id": "U0KEYTURNBOT", "bot_id": "B0KEYTURN"}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(args.get("channel", ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        problem = self._check_message(args)
        if problem:
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        thread_ts = args.get("thread_ts")
        if thread_ts and not self._find(channel, thread_ts):
            return {"ok": False, "error": "thread_not_found"}
        metadata = _json(args.get("metadata"))
        message = SlackMessage(
            channel, self._ts(), args.get("text", ""), _json(args.get("blocks")) or [], thread_ts, metadata
        )
        self.messages.append(message)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": {"text": message.text, "ts": message.ts}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find(args.get("channel", ""), args.get("ts", ""))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        problem = self._check_message(args)
        if problem:
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        message.text, message.blocks = args.get("text", message.text), _json(args.get("blocks")) or []
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._resolve_channel(args.get("channel", "")) is None or args.get("user") not in self.users:
            return {"ok": False, "error": "channel_not_found" if args.get("user") in self.users else "user_not_found"}
        problem = self._check_message(args)
        if problem:
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        self.ephemeral.append(
            {
                "channel": args["channel"],
                "user": args["user"],
                "text": args.get("text", ""),
                "blocks": _json(args.get("blocks")) or [],
            }
        )
        return {"ok": True, "message_ts": self._ts()}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger = args.get("trigger_id", "")
        if trigger not in self.triggers:
            return {"ok": False, "error": "invalid_trigger_id"}
        self.triggers.discard(trigger)  # a trigger opens one view
        view = _json(args.get("view")) or {}
        if view.get("type") != "modal" or not view.get("title") or len(view.get("private_metadata", "")) > 3000:
            return {"ok": False, "error": "invalid_arguments"}
        problem = block_problem(view.get("blocks") or [])
        if problem:
            return {"ok": False, "error": "invalid_arguments", "errors": [problem]}
        opened = {**view, "id": f"V{len(self.views) + 1:08d}", "hash": "h"}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("users", "")
        return (
            {"ok": True, "channel": {"id": "D" + user[1:]}}
            if user in self.users
            else {"ok": False, "error": "user_not_found"}
        )

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        found = [
            m
            for m in self.messages
            if m.channel == args.get("channel") and m.thread_ts is None and float(m.ts) >= float(args.get("oldest", 0))
        ]
        return {"ok": True, "messages": [self._shown(m, args) for m in reversed(found)]}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        parent = self._find(args.get("channel", ""), args.get("ts", ""))
        if parent is None:
            return {"ok": False, "error": "thread_not_found"}
        found = [parent] + [
            m
            for m in self.messages
            if m.channel == parent.channel and m.thread_ts == parent.ts and float(m.ts) >= float(args.get("oldest", 0))
        ]
        return {"ok": True, "messages": [self._shown(m, args) for m in found]}

    # --- what an approver does in Slack -------------------------------------------------------

    def click(self, message: SlackMessage, action_id: str, user: str) -> dict[str, Any]:
        """The block_actions payload Slack sends when ``user`` clicks a button on ``message``."""
        button = next(b for b in message.buttons() if b["action_id"] == action_id)
        trigger = self._trigger()
        return {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "keyturn"},
            "user": {"id": user, "username": user.lower(), "team_id": self._team_of(user)},
            "api_app_id": "A0KEYTURN",
            "trigger_id": trigger,
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
            },
            "channel": {"id": message.channel, "name": "approvals"},
            "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks},
            "response_url": "https://hooks.invalid/actions/T0KEYTURN/1/x",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "keyturn_vote",
                    "value": button["value"],
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }

    def submit(self, view: dict[str, Any], user: str, reason: str) -> dict[str, Any]:
        """The view_submission payload Slack sends when ``user`` submits the deny modal."""
        return {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "keyturn"},
            "user": {"id": user, "username": user.lower(), "team_id": self._team_of(user)},
            "trigger_id": self._trigger(),
            "view": {
                **view,
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
            },
        }

    def signed(
        self, payload: dict[str, Any], *, timestamp: int | None = None, secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of Slack's POST, signed as Slack signs: v0=HMAC-SHA256(secret, "v0:ts:body")."""
        return self.signed_body(
            urlencode({"payload": json.dumps(payload)}).encode(), timestamp=timestamp, secret=secret
        )

    def signed_body(
        self, body: bytes, *, timestamp: int | None = None, secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """Any bytes, with the headers Slack would sign them with (``signed``'s signature)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        mac = hmac.new(
            (secret or self.signing_secret).encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256
        ).hexdigest()
        return body, {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={mac}",
            "Content-Type": "application/x-www-form-urlencoded",
        }

    # --- reading what happened ----------------------------------------------------------------

    def top_level(self, action_id: str) -> list[SlackMessage]:
        """Approval (or break-glass) messages about ``action_id``, one per target."""
        return [
            m
            for m in self.messages
            if m.thread_ts is None and (m.metadata or {}).get("event_payload", {}).get("action_id") == action_id
        ]

    def thread(self, message: SlackMessage) -> list[SlackMessage]:
        return [m for m in self.messages if m.channel == message.channel and m.thread_ts == message.ts]

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    # --- private ------------------------------------------------------------------------------

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    def _trigger(self) -> str:
        with self._lock:
            trigger = (
                f"{int(time.time())}.{next(self._clock)}.{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:16]}"
            )
            self.triggers.add(trigger)
            return trigger

    def _team_of(self, user: str) -> str:
        return self.users.get(user, {}).get("team_id", TEAM)

    def _resolve_channel(self, channel: str) -> str | None:
        if channel in self.users:
            return "D" + channel[1:]  # posting to a person opens their direct-message channel
        return channel if channel in self.known_channels or channel.startswith("D") else None

    def _find(self, channel: str, ts: str) -> SlackMessage | None:
        return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    def _shown(self, message: SlackMessage, args: dict[str, Any]) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text}
        if message.thread_ts:
            shown["thread_ts"] = message.thread_ts
        if message.metadata and str(args.get("include_all_metadata", "")).lower() in ("true", "1"):
            shown["metadata"] = message.metadata
        return shown

    @staticmethod
    def _check_message(args: dict[str, Any]) -> str | None:
        blocks = _json(args.get("blocks"))
        if not args.get("text") and not blocks:
            return "no_text"
        return block_problem(blocks or [])


def block_problem(blocks: list[dict[str, Any]]) -> str | None:
    """What Slack would refuse in ``blocks`` (None when nothing): unknown block types, text objects
    of the wrong type for their place (a header's is plain_text; a section's text and fields, a
    context's text elements are plain_text or mrkdwn), ``emoji`` anywhere but plain_text and
    ``verbatim`` anywhere but mrkdwn, texts over their limits, a section with neither text nor
    fields, buttons without an action_id."""
    for block in blocks:
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            return f"unknown block type {kind!r}"
        text = block.get("text")
        if kind == "header" and (not isinstance(text, dict) or text.get("type") != "plain_text"):
            return "a header's text must be plain_text"
        if kind == "section":
            if text is None and not block.get("fields"):
                return "a section needs text or fields"
            fields = block.get("fields") or []
            if len(fields) > 10:
                return "a section holds at most 10 fields"
            for field_text in fields:
                if problem := _text_problem(field_text, 2000):
                    return f"section field: {problem}"
        if isinstance(text, dict) and (problem := _text_problem(text, 150 if kind == "header" else 3000)):
            return f"{kind} text: {problem}"
        elements = block.get("elements", [])
        if kind == "context":
            if len(elements) > 10:
                return "a context holds at most 10 elements"
            for element in elements:
                if element.get("type") != "image" and (problem := _text_problem(element, 3000)):
                    return f"context element: {problem}"
        for element in elements:
            if kind == "actions" and (not element.get("action_id") or len(element.get("value", "")) > 2000):
                return "a button needs an action_id and a value of at most 2000 characters"
    return None


def _text_problem(text: Any, limit: int) -> str | None:
    if not isinstance(text, dict) or text.get("type") not in TEXT_TYPES or not isinstance(text.get("text"), str):
        return f"not a text object: {text!r}"
    if not text["text"]:
        return "empty text"
    if len(text["text"]) > limit:
        return f"longer than Slack allows ({len(text['text'])} > {limit})"
    if "emoji" in text and text["type"] != "plain_text":
        return "emoji is a plain_text field"
    if "verbatim" in text and text["type"] != "mrkdwn":
        return "verbatim is a mrkdwn field"
    return None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


@contextlib.contextmanager
def running_slack(channels: tuple[str, ...], users: dict[str, str | None]) -> Iterator[FakeSlack]:
    """A started fake workspace with these channels and users (id → email), stopped afterwards."""
    fake = FakeSlack().start()
    for channel in channels:
        fake.add_channel(channel)
    for user_id, email in users.items():
        fake.add_user(user_id, email)
    try:
        yield fake
    finally:
        fake.stop()
