"""Demo and catalog data for the reference schema: `seed(connection)`.

Idempotent: every row is an upsert on its natural key (`INSERT … ON CONFLICT (key) DO UPDATE
… WHERE <a column differs>`), so a second run inserts and updates nothing, and a catalog entry
whose description changed here is updated in place, not duplicated. Rows that are not in this
file are left alone (the seed never deletes).

`connection` is a SQLAlchemy 2 Connection inside a transaction that the caller owns: this
module never commits. To run it by hand:

    DATABASE_URL=postgresql://… python migrations/seed.py

The demo connector authorisations hold `demo://` credential references: they point at
nothing, and no secret is stored here or in the database.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

# models.py sits next to this file: importable whatever the working directory.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from models import (  # noqa: E402
    Agent,
    AgentCapability,
    AgentConfig,
    Base,
    Connector,
    ConnectorAuth,
    ConnectorKind,
    Organization,
    Tool,
    User,
)

ORGANIZATION = {"slug": "acme-demo", "name": "Acme (demo)"}

USER = {"email": "demo@example.com", "display_name": "Demo Owner", "role": "owner"}

# (slug, kind, name, auth_type, description, docs_url): 16 entries covering all 15 kinds
# (two SMTP-based email services).
CONNECTORS: Sequence[tuple[str, ConnectorKind, str, str, str, str | None]] = (
    (
        "gmail",
        ConnectorKind.GMAIL,
        "Gmail",
        "oauth2",
        "Send and receive email through a Google Workspace or Gmail mailbox.",
        "https://developers.google.com/gmail/api",
    ),
    (
        "outlook",
        ConnectorKind.OUTLOOK,
        "Outlook",
        "oauth2",
        "Send and receive email through a Microsoft 365 or Outlook.com mailbox (Graph API).",
        "https://learn.microsoft.com/graph/outlook-mail-concept-overview",
    ),
    (
        "smtp",
        ConnectorKind.SMTP,
        "SMTP",
        "basic",
        "Send email through any SMTP relay (STARTTLS or implicit TLS).",
        "https://datatracker.ietf.org/doc/html/rfc5321",
    ),
    (
        "amazon-ses",
        ConnectorKind.SMTP,
        "Amazon SES",
        "basic",
        "Send bulk and transactional email through Amazon SES's SMTP interface.",
        "https://docs.aws.amazon.com/ses/latest/dg/send-email-smtp.html",
    ),
    (
        "twilio-sms",
        ConnectorKind.TWILIO_SMS,
        "Twilio SMS",
        "api_key",
        "Send and receive SMS and MMS through a Twilio phone number or messaging service.",
        "https://www.twilio.com/docs/messaging",
    ),
    (
        "whatsapp",
        ConnectorKind.WHATSAPP,
        "WhatsApp Business",
        "oauth2",
        "Message customers through the WhatsApp Business Cloud API.",
        "https://developers.facebook.com/docs/whatsapp/cloud-api",
    ),
    (
        "messenger",
        ConnectorKind.MESSENGER,
        "Facebook Messenger",
        "oauth2",
        "Reply to conversations with a Facebook Page through the Messenger Platform.",
        "https://developers.facebook.com/docs/messenger-platform",
    ),
    (
        "instagram",
        ConnectorKind.INSTAGRAM,
        "Instagram",
        "oauth2",
        "Publish posts and answer direct messages and comments of an Instagram professional "
        "account.",
        "https://developers.facebook.com/docs/instagram-platform",
    ),
    (
        "facebook",
        ConnectorKind.FACEBOOK,
        "Facebook Pages",
        "oauth2",
        "Publish posts and moderate comments on a Facebook Page.",
        "https://developers.facebook.com/docs/pages-api",
    ),
    (
        "x",
        ConnectorKind.X,
        "X",
        "oauth2",
        "Post, reply and read mentions of an X (formerly Twitter) account.",
        "https://docs.x.com/x-api",
    ),
    (
        "tiktok",
        ConnectorKind.TIKTOK,
        "TikTok",
        "oauth2",
        "Publish videos and read comments of a TikTok business account.",
        "https://developers.tiktok.com/doc/content-posting-api-get-started",
    ),
    (
        "linkedin",
        ConnectorKind.LINKEDIN,
        "LinkedIn",
        "oauth2",
        "Share posts as a member or an organization page on LinkedIn.",
        "https://learn.microsoft.com/linkedin/marketing/",
    ),
    (
        "youtube",
        ConnectorKind.YOUTUBE,
        "YouTube",
        "oauth2",
        "Upload videos and moderate comments of a YouTube channel.",
        "https://developers.google.com/youtube/v3",
    ),
    (
        "slack",
        ConnectorKind.SLACK,
        "Slack",
        "oauth2",
        "Post to channels and answer direct messages in a Slack workspace.",
        "https://api.slack.com/",
    ),
    (
        "telegram",
        ConnectorKind.TELEGRAM,
        "Telegram",
        "api_key",
        "Chat with users and groups through a Telegram bot.",
        "https://core.telegram.org/bots/api",
    ),
    (
        "webhook",
        ConnectorKind.WEBHOOK,
        "Generic webhook",
        "webhook_secret",
        "Receive events from, and send events to, any HTTP endpoint (HMAC-signed).",
        None,
    ),
)

# (connector slug, label, credential_ref, scopes). Clearly fake: `demo://` references
# resolve to nothing; no secret anywhere.
CONNECTOR_AUTHS: Sequence[tuple[str, str, str, list[str]]] = (
    (
        "gmail",
        "Demo Gmail mailbox",
        "demo://connectors/gmail/demo-mailbox",
        ["https://www.googleapis.com/auth/gmail.send"],
    ),
    ("twilio-sms", "Demo Twilio number", "demo://connectors/twilio-sms/demo-number", []),
    (
        "instagram",
        "Demo Instagram account",
        "demo://connectors/instagram/demo-account",
        ["instagram_business_basic", "instagram_business_content_publish"],
    ),
)

AGENTS = (
    {
        "slug": "email-campaign",
        "name": "Email Campaign Agent",
        "description": "Plans, writes and sends email campaigns through Gmail or Outlook.",
    },
    {
        "slug": "sms-engagement",
        "name": "SMS Engagement Agent",
        "description": "Answers and follows up with customers over Twilio SMS and WhatsApp.",
    },
    {
        "slug": "social-media",
        "name": "Social Media Agent",
        "description": "Drafts and schedules posts for Instagram, Facebook, X and TikTok.",
    },
)

# agent slug -> (name, description)
CAPABILITIES = (
    ("email-campaign", "email.compose", "Write subject lines and bodies in the brand voice."),
    ("email-campaign", "email.schedule", "Pick send times per recipient time zone."),
    ("sms-engagement", "sms.reply", "Answer inbound SMS and WhatsApp messages."),
    ("sms-engagement", "sms.follow_up", "Send follow-ups to customers who went quiet."),
    ("social-media", "social.draft_post", "Draft posts sized for each network."),
    ("social-media", "social.schedule_post", "Schedule posts for each network's best hours."),
)

# agent slug -> key, value, description
CONFIGS = (
    (
        "email-campaign",
        "default",
        {"model": "gpt-4o-mini", "temperature": 0.4, "connectors": ["gmail", "outlook"]},
        "Model and channels.",
    ),
    (
        "sms-engagement",
        "default",
        {"model": "gpt-4o-mini", "temperature": 0.2, "connectors": ["twilio-sms", "whatsapp"]},
        "Model and channels.",
    ),
    (
        "sms-engagement",
        "quiet_hours",
        {"start": "21:00", "end": "08:00", "timezone": "recipient"},
        "No outbound SMS during the recipient's night (TCPA).",
    ),
    (
        "social-media",
        "default",
        {
            "model": "gpt-4o-mini",
            "temperature": 0.7,
            "connectors": ["instagram", "facebook", "x", "tiktok"],
        },
        "Model and channels.",
    ),
)

TOOLS = (
    (
        "email-campaign",
        "send_email",
        "Send an email from an authorised mailbox.",
        {
            "type": "object",
            "properties": {
                "to": {"type": "array", "items": {"type": "string", "format": "email"}},
                "subject": {"type": "string"},
                "body_html": {"type": "string"},
            },
            "required": ["to", "subject", "body_html"],
        },
    ),
    (
        "sms-engagement",
        "send_sms",
        "Send an SMS from an authorised number.",
        {
            "type": "object",
            "properties": {
                "to": {"type": "string", "pattern": "^\\+[1-9][0-9]{6,14}$"},
                "body": {"type": "string", "maxLength": 1600},
            },
            "required": ["to", "body"],
        },
    ),
    (
        "social-media",
        "publish_post",
        "Publish or schedule a post on an authorised social account.",
        {
            "type": "object",
            "properties": {
                "network": {"enum": ["instagram", "facebook", "x", "tiktok"]},
                "text": {"type": "string"},
                "media_urls": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "publish_at": {"type": "string", "format": "date-time"},
            },
            "required": ["network", "text"],
        },
    ),
)


def upsert(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str],
) -> int:
    """Insert `rows`, or update the existing row with the same `key` when a column differs.

    Returns the number of rows inserted or updated (0 when everything was already there).
    """
    if not rows:
        return 0
    stmt = insert(table).values(list(rows))
    changing = [c for c in rows[0] if c not in key]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={c: stmt.excluded[c] for c in changing},
        where=sa.or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in changing)),
    )
    # RETURNING yields exactly the rows inserted or updated (a skipped conflict returns none),
    # which is more portable than the driver's rowcount.
    return len(connection.execute(stmt.returning(table.c.id)).all())


def _table(model: type[Base]) -> sa.Table:
    return Base.metadata.tables[model.__tablename__]


def _ids(connection: sa.Connection, table: sa.Table, key: str, **where: Any) -> dict[str, Any]:
    query = sa.select(table.c[key], table.c.id).filter_by(**where)
    return {key_value: id_ for key_value, id_ in connection.execute(query)}


def seed(connection: sa.Connection) -> dict[str, int]:
    """Upsert the demo organization, its user, agents and tools, and the connector catalog.

    Returns {table: rows inserted or updated}; all zero when the data was already there.
    """
    changed: dict[str, int] = {}
    organizations = _table(Organization)
    changed["organizations"] = upsert(connection, organizations, [ORGANIZATION], ["slug"])
    org_id = _ids(connection, organizations, "slug", slug=ORGANIZATION["slug"])[
        ORGANIZATION["slug"]
    ]

    changed["users"] = upsert(
        connection, _table(User), [{**USER, "organization_id": org_id}], ["email"]
    )

    connectors = _table(Connector)
    changed["connectors"] = upsert(
        connection,
        connectors,
        [
            {
                "slug": slug,
                "kind": kind,
                "name": name,
                "auth_type": auth_type,
                "description": description,
                "docs_url": docs_url,
            }
            for slug, kind, name, auth_type, description, docs_url in CONNECTORS
        ],
        ["slug"],
    )
    connector_ids = _ids(connection, connectors, "slug")

    changed["connector_auths"] = upsert(
        connection,
        _table(ConnectorAuth),
        [
            {
                "organization_id": org_id,
                "connector_id": connector_ids[connector],
                "label": label,
                "credential_ref": credential_ref,
                "scopes": scopes,
            }
            for connector, label, credential_ref, scopes in CONNECTOR_AUTHS
        ],
        ["organization_id", "connector_id", "label"],
    )

    agents = _table(Agent)
    changed["agents"] = upsert(
        connection,
        agents,
        [{**agent, "organization_id": org_id} for agent in AGENTS],
        ["organization_id", "slug"],
    )
    agent_ids = _ids(connection, agents, "slug", organization_id=org_id)

    changed["agent_capabilities"] = upsert(
        connection,
        _table(AgentCapability),
        [
            {"agent_id": agent_ids[agent], "name": name, "description": description}
            for agent, name, description in CAPABILITIES
        ],
        ["agent_id", "name"],
    )
    changed["agent_configs"] = upsert(
        connection,
        _table(AgentConfig),
        [
            {"agent_id": agent_ids[agent], "key": key, "value": value, "description": description}
            for agent, key, value, description in CONFIGS
        ],
        ["agent_id", "key"],
    )
    changed["tools"] = upsert(
        connection,
        _table(Tool),
        [
            {
                "agent_id": agent_ids[agent],
                "name": name,
                "description": description,
                "input_schema": schema,
            }
            for agent, name, description, schema in TOOLS
        ],
        ["agent_id", "name"],
    )
    return changed


if __name__ == "__main__":
    url = sa.make_url(os.environ["DATABASE_URL"])
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for table, n in seed(conn).items():
            print(f"{table}: {n} row(s) inserted or updated")
    engine.dispose()
