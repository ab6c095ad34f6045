"""Synthetic but realistic traffic for the demo, the smoke check and the end-to-end benchmark.

A deterministic population (for a seed) of people, each with one device: web, iOS or Android, a public IP inside
the demo geo database's ranges, a user agent, locale, app version, experiment assignments, and personal data in
the fields the schemas mark as PII (email, phone, name). Sessions are sequences of client events that follow
each other the way a product's do (open the app, view screens, post messages, join a community, identify);
server-side events (billing, automation, moderation) come separately, as a backend emits them.

Nothing here talks to the network: callers feed the events to the client SDK or straight to the gateway.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

PLAN_TIERS = ("free", "pro", "team", "enterprise")

#: Public address blocks covered by ``geoip/data/demo-cities.csv`` (one per demo city).
DEMO_IP_BLOCKS = (
    "81.2.69", "89.160.20", "8.8.8", "151.101.1", "185.60.216", "31.13.71", "104.16.132", "52.95.110",
    "177.71.207", "203.2.218", "43.250.192", "196.216.2",
)

_USER_AGENTS = {
    "web": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
        "Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    ),
    "ios": ("AcmeCommunity/4.12.0 (iPhone; iOS 17.4.1; Scale/3.00)",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Mobile/15E148"),
    "android": ("AcmeCommunity/4.11.2 (Linux; Android 14; Pixel 8) okhttp/4.12.0",
                "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 "
                "Mobile Safari/537.36"),
}
_DEVICES = {
    "web": {"type": "desktop"},
    "ios": {"type": "phone", "manufacturer": "Apple", "model": "iPhone15,3", "os": "iOS", "os_version": "17.4.1"},
    "android": {"type": "phone", "manufacturer": "Google", "model": "Pixel 8", "os": "Android", "os_version": "14"},
}
_LOCALES = (("en-US", "America/New_York"), ("de-DE", "Europe/Berlin"), ("sv-SE", "Europe/Stockholm"),
            ("fr-FR", "Europe/Paris"), ("pt-BR", "America/Sao_Paulo"), ("en-AU", "Australia/Sydney"),
            ("ja-JP", "Asia/Tokyo"))
_FIRST = ("Ada", "Grace", "Linus", "Margaret", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Tim", "Frances", "Dennis")
_LAST = ("Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Dijkstra", "Liskov", "Thompson", "Perlman")
_SCREENS = ("Feed", "Inbox", "ThreadDetail", "Community", "Settings", "Profile", "Search")
_PAGES = ("/", "/pricing", "/docs/start", "/c/rust/threads", "/c/python/threads", "/blog/launch", "/settings")
_COMMUNITIES = ("c_rust", "c_python", "c_data", "c_design", "c_ops")


@dataclass(frozen=True)
class Person:
    """One user and their device, with everything an SDK would know about them."""

    index: int
    user_id: str
    anonymous_id: str
    device_id: str
    platform: str
    ip: str
    user_agent: str
    locale: str
    timezone: str
    app_version: str
    experiments: dict[str, str]
    email: str
    phone: str
    name: str
    plan_tier: str
    known_to_oltp: bool = True

    def context(self) -> dict[str, Any]:
        """The automatic context an SDK on this device attaches (the client merges app version, locale and
        experiments itself; this is the rest)."""
        return {"ip": self.ip, "user_agent": self.user_agent, "timezone": self.timezone,
                "device": dict(_DEVICES[self.platform]),
                "library": {"name": f"headwater-{'js' if self.platform == 'web' else self.platform}", "version": "1.0.0"}}


def population(count: int, seed: int = 1, unknown_share: float = 0.05) -> list[Person]:
    """``count`` people, the same for the same seed.

    :param unknown_share: share of users missing from the OLTP accounts table (their plan tier is "unknown")
    """
    rng = random.Random(seed)
    people = []
    for i in range(count):
        platform = rng.choices(("web", "ios", "android"), weights=(5, 3, 2))[0]
        locale, tz = rng.choice(_LOCALES)
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        block = DEMO_IP_BLOCKS[rng.randrange(len(DEMO_IP_BLOCKS))]
        people.append(Person(
            index=i,
            user_id=f"usr_{seed}_{i:05d}",
            anonymous_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            device_id=f"dev_{seed}_{i:05d}_{platform}",
            platform=platform,
            ip=f"{block}.{rng.randint(1, 254)}",
            user_agent=rng.choice(_USER_AGENTS[platform]),
            locale=locale,
            timezone=tz,
            app_version=f"4.{rng.randint(9, 12)}.{rng.randint(0, 3)}" if platform != "web" else "2026.12.1",
            experiments={"onboarding_v2": rng.choice(("control", "treatment")),
                         "feed_ranking": rng.choice(("control", "recency", "engagement"))},
            email=f"{first}.{last}{i}@example.org".lower(),
            phone=f"+4915{rng.randint(10**8, 10**9 - 1)}",
            name=f"{first} {last}",
            plan_tier=rng.choices(PLAN_TIERS, weights=(60, 25, 12, 3))[0],
            known_to_oltp=rng.random() >= unknown_share,
        ))
    return people


def accounts(people: list[Person]) -> list[tuple[str, str]]:
    """``(user_id, plan_tier)`` rows for the OLTP accounts table: the people known to it."""
    return [(p.user_id, p.plan_tier) for p in people if p.known_to_oltp]


@dataclass
class ClientEvent:
    """One call a client app makes: ``client.track(name, properties, user_id=...)``."""

    name: str
    properties: dict[str, Any]
    signed_in: bool = True
    valid: bool = True
    note: str = ""


def session(person: Person, rng: random.Random, length: int) -> list[ClientEvent]:
    """A plausible session of ``length`` client events for ``person``."""
    out: list[ClientEvent] = []
    signed_in = rng.random() < 0.85
    if signed_in and rng.random() < 0.3:
        out.append(ClientEvent("identify", _identify(person, rng)))
    previous = None
    while len(out) < length:
        kind = rng.choices(("view", "message", "join"), weights=(60, 32, 8))[0]
        if kind == "view":
            if person.platform == "web":
                path = rng.choice(_PAGES)
                out.append(ClientEvent("page_viewed", {
                    "url": f"https://app.acme.example{path}", "path": path, "title": "Acme Community",
                    "referrer": "https://www.google.com/", "load_time_ms": rng.randint(80, 2500),
                    "viewport": {"width": rng.choice((1280, 1440, 1920)), "height": rng.choice((720, 900, 1080))}},
                    signed_in))
            else:
                screen = rng.choice(_SCREENS)
                props: dict[str, Any] = {"screen_name": screen, "load_time_ms": rng.randint(20, 900),
                                         "is_first_view": previous is None, "orientation": "portrait"}
                if previous:
                    props["previous_screen_name"] = previous
                previous = screen
                out.append(ClientEvent("screen_viewed", props, signed_in))
        elif kind == "message" and signed_in:
            n = rng.getrandbits(40)
            out.append(ClientEvent("message_sent", {
                "message_id": f"msg_{n:x}", "conversation_id": f"conv_{n % 211}",
                "community_id": rng.choice(_COMMUNITIES), "channel_type": rng.choice(("direct", "thread", "channel")),
                "message_type": rng.choice(("text", "text", "text", "image")), "length_chars": rng.randint(1, 800),
                "mention_count": rng.randint(0, 3), "contains_link": rng.random() < 0.15,
                "sent_via": {"web": "web", "ios": "ios", "android": "android"}[person.platform]}))
        elif kind == "join" and signed_in:
            out.append(ClientEvent("community_join", {
                "community_id": rng.choice(_COMMUNITIES), "join_source": rng.choice(("invite_link", "search", "direct")),
                "role": "member", "member_count": rng.randint(10, 50_000)}))
    return out


def _identify(person: Person, rng: random.Random) -> dict[str, Any]:
    first, last = person.name.split(" ", 1)
    return {"email": person.email, "phone": person.phone, "username": f"{first.lower()}_{person.index}",
            "name": person.name, "first_name": first, "last_name": last, "country": "DE",
            "preferred_language": person.locale, "marketing_opt_in": rng.random() < 0.3}


#: Broken events a real client sends now and then, each with the reason the gateway should give.
INVALID_EVENTS: tuple[ClientEvent, ...] = (
    ClientEvent("message_sent", {"message_id": "msg_bad", "conversation_id": "conv_1", "channel_type": "direct",
                                 "message_type": "text", "length_chars": -5}, valid=False,
                note="negative length"),
    ClientEvent("page_viewed", {"url": "https://app.acme.example/x"}, valid=False, note="missing path"),
    ClientEvent("screen_viewed", {"screen_name": "Feed", "orientation": "upside_down"}, valid=False,
                note="unknown orientation"),
    ClientEvent("community_join", {"community_id": "c_rust", "join_source": "carrier_pigeon"}, valid=False,
                note="unknown join source"),
    ClientEvent("checkout_completed", {"order_id": "o_1"}, valid=False, note="no schema for this event"),
)


def invalid_event(rng: random.Random) -> ClientEvent:
    return rng.choice(INVALID_EVENTS)


@dataclass
class ServerEvent:
    """One call on :class:`headwater_client.AnalyticsEmitter`: ``getattr(emitter, method)(**kwargs)``."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def server_events(people: list[Person], rng: random.Random, count: int) -> Iterator[ServerEvent]:
    """Backend domain events about ``people``: billing, automations, moderation."""
    payers = [p for p in people if p.plan_tier != "free"] or people
    for _ in range(count):
        kind = rng.choices(("subscription_started", "subscription_cancelled", "payment_failed", "automation_run",
                            "moderation_action"), weights=(30, 8, 12, 35, 15))[0]
        person = rng.choice(payers if kind.startswith(("subscription", "payment")) else people)
        sub = f"sub_{person.index:05d}"
        if kind == "subscription_started":
            yield ServerEvent(kind, dict(user_id=person.user_id, subscription_id=sub, plan_id=f"{person.plan_tier}_monthly",
                                         billing_interval="month", amount_minor=rng.choice((900, 4900, 19900)),
                                         currency="EUR", seats=rng.randint(1, 40), payment_provider="stripe",
                                         billing_email=person.email))
        elif kind == "subscription_cancelled":
            yield ServerEvent(kind, dict(user_id=person.user_id, subscription_id=sub, plan_id=f"{person.plan_tier}_monthly",
                                         reason=rng.choice(("too_expensive", "missing_features", "unused")),
                                         cancel_at_period_end=True))
        elif kind == "payment_failed":
            yield ServerEvent(kind, dict(user_id=person.user_id, payment_id=f"pay_{rng.getrandbits(32):x}",
                                         subscription_id=sub, amount_minor=4900, currency="EUR",
                                         failure_code=rng.choice(("card_declined", "insufficient_funds", "expired_card")),
                                         attempt_number=rng.randint(1, 3), will_retry=True))
        elif kind == "automation_run":
            yield ServerEvent(kind, dict(user_id=person.user_id, automation_id="welcome_sequence",
                                         run_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                         trigger=rng.choice(("schedule", "event")),
                                         status=rng.choices(("succeeded", "failed"), weights=(9, 1))[0],
                                         duration_ms=rng.randint(5, 4000)))
        else:
            target = rng.choice(people)
            yield ServerEvent(kind, dict(user_id=person.user_id, community_id=rng.choice(_COMMUNITIES),
                                         action=rng.choice(("warn", "mute", "delete_message")), target_type="user",
                                         target_id=target.user_id, automated=rng.random() < 0.5,
                                         reason=rng.choice(("spam", "off_topic"))))
