"""SQLAlchemy 2 declarative models of the whole reference schema (the omni-channel data model).

This module is the `target_metadata` of `env.py`: after `alembic upgrade head`, `alembic check`
must find no difference between these models and the database. When you change a model, write
the revision that makes the database match (`alembic revision --autogenerate --rev-id
0006_<what> -m "..."`, then read and edit what it wrote) and keep both in the same commit.

Conventions, shared with the revisions in `versions/`:

- snake_case plural table names; `id uuid` primary keys from `gen_random_uuid()` (built into
  PostgreSQL 13+, so neither uuid-ossp nor pgcrypto is needed);
- `created_at` / `updated_at` are `timestamptz` defaulting to `now()`; `updated_at` is kept
  current by the `set_updated_at()` trigger that every table has (see `0001_core`), which skips
  updates that change nothing;
- constraint and index names follow PostgreSQL's own defaults (`<table>_pkey`,
  `<table>_<columns>_key`, `<table>_<columns>_fkey`, `<table>_<columns>_idx`), see
  `NAMING_CONVENTION`; the revisions spell the same names out;
- every foreign key has an index whose leading column is the key (PostgreSQL does not create
  one, and `ON DELETE` would scan the child table without it), and an explicit `ON DELETE`;
- enumerations with a fixed, product-wide vocabulary are PostgreSQL enum types
  (`connector_kind`); small per-table vocabularies are `text` with a CHECK constraint, which is
  cheaper to change.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, ENUM, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Names as PostgreSQL itself would choose them, so that the names in the database are the
# ones a DBA expects and the revisions can spell them out.
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
}
# CHECK constraints are named in full where they are declared (`<table>_<what>_check`): a "ck"
# convention would also rewrite the names that the revisions spell out (Alembic builds their
# constraints with target_metadata's naming convention).

#: Dimension of every embedding column (OpenAI text-embedding-3-small / ada-002 size).
EMBEDDING_DIM = 1536

SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"


class ConnectorKind(enum.StrEnum):
    """The platforms a connector talks to: the PostgreSQL enum type `connector_kind`."""

    GMAIL = "gmail"
    OUTLOOK = "outlook"
    SMTP = "smtp"
    TWILIO_SMS = "twilio_sms"
    WHATSAPP = "whatsapp"
    MESSENGER = "messenger"
    INSTAGRAM = "instagram"
    FACEBOOK = "facebook"
    X = "x"
    TIKTOK = "tiktok"
    LINKEDIN = "linkedin"
    YOUTUBE = "youtube"
    SLACK = "slack"
    TELEGRAM = "telegram"
    WEBHOOK = "webhook"


connector_kind = ENUM(
    ConnectorKind,
    name="connector_kind",
    values_callable=lambda kinds: [k.value for k in kinds],
)


def ivfflat_cosine_index(table: str, lists: int) -> Index:
    """The approximate-nearest-neighbour index of `<table>.embedding` for `<=>` queries.

    `lists` is sized for the table's expected rows (pgvector: rows / 1000 up to 1M rows,
    sqrt(rows) above). IVFFLAT builds its lists from the rows present at build time: after a
    bulk load, `REINDEX INDEX CONCURRENTLY <table>_embedding_idx`. Queries read
    `ivfflat.probes` lists (default 1, which can return fewer rows than the LIMIT): set it to
    about sqrt(lists), or `ivfflat.iterative_scan = relaxed_order` (pgvector 0.8+).
    """
    return Index(
        f"{table}_embedding_idx",
        "embedding",
        postgresql_using="ivfflat",
        postgresql_with={"lists": lists},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        str: Text(),
        datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
        dict[str, Any]: JSONB(),
        list[str]: ARRAY(Text()),
        bytes: LargeBinary(),
    }


class UuidPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()"), sort_order=-100
    )


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), sort_order=100)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), sort_order=101)


# --------------------------------------------------------------------------- 0001_core


class Organization(UuidPrimaryKey, Timestamps, Base):
    """A tenant. Deleting one deletes everything it owns (ON DELETE CASCADE below it)."""

    __tablename__ = "organizations"
    __table_args__ = (
        UniqueConstraint("slug"),
        CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="organizations_slug_format_check"),
        CheckConstraint("btrim(name) <> ''", name="organizations_name_not_blank_check"),
    )

    slug: Mapped[str]
    name: Mapped[str]

    users: Mapped[list[User]] = relationship(
        back_populates="organization", cascade="all, delete-orphan", passive_deletes=True
    )
    agents: Mapped[list[Agent]] = relationship(
        back_populates="organization", cascade="all, delete-orphan", passive_deletes=True
    )
    connector_auths: Mapped[list[ConnectorAuth]] = relationship(
        back_populates="organization", cascade="all, delete-orphan", passive_deletes=True
    )


class User(UuidPrimaryKey, Timestamps, Base):
    """A person who signs in; belongs to one organization. E-mail is stored lower-cased."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("email"),
        CheckConstraint("email = lower(email)", name="users_email_lowercase_check"),
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="users_role_check"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str]
    display_name: Mapped[str]
    role: Mapped[str] = mapped_column(server_default="member")

    organization: Mapped[Organization] = relationship(back_populates="users")


# --------------------------------------------------------------------------- 0002_connectors


class Connector(UuidPrimaryKey, Timestamps, Base):
    """The omni-channel catalog: one row per integration the product offers."""

    __tablename__ = "connectors"
    __table_args__ = (
        UniqueConstraint("slug"),
        CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="connectors_slug_format_check"),
        CheckConstraint(
            "auth_type IN ('oauth2', 'api_key', 'basic', 'webhook_secret')",
            name="connectors_auth_type_check",
        ),
    )

    slug: Mapped[str]
    kind: Mapped[ConnectorKind] = mapped_column(connector_kind, index=True)
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")
    auth_type: Mapped[str]
    docs_url: Mapped[str | None]
    is_enabled: Mapped[bool] = mapped_column(server_default=true())

    auths: Mapped[list[ConnectorAuth]] = relationship(back_populates="connector")


class ConnectorAuth(UuidPrimaryKey, Timestamps, Base):
    """An organization's (user_id NULL) or a user's authorisation of a connector.

    Credentials are never stored in clear: either `credential_ref` points into a secret store
    (e.g. `vault://…`, `awssm://…`), or `encrypted_credentials` holds a blob the application
    encrypted with key `encryption_key_id` (envelope encryption). Exactly one of the two is set.

    ON DELETE: organization → CASCADE; user → CASCADE (a person's mailbox token must not
    silently become organization-wide); connector → RESTRICT (retire a catalog entry with
    `is_enabled = false`, or revoke its authorisations first).
    """

    __tablename__ = "connector_auths"
    __table_args__ = (
        UniqueConstraint("organization_id", "connector_id", "label"),
        CheckConstraint(
            "status IN ('active', 'expired', 'revoked', 'error')",
            name="connector_auths_status_check",
        ),
        CheckConstraint(
            "num_nonnulls(credential_ref, encrypted_credentials) = 1",
            name="connector_auths_one_credential_check",
        ),
        CheckConstraint(
            "encrypted_credentials IS NULL OR encryption_key_id IS NOT NULL",
            name="connector_auths_encryption_key_check",
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    connector_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connectors.id", ondelete="RESTRICT"), index=True
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="active")
    credential_ref: Mapped[str | None]
    encrypted_credentials: Mapped[bytes | None]
    encryption_key_id: Mapped[str | None]
    scopes: Mapped[list[str]] = mapped_column(server_default=text("'{}'::text[]"))
    expires_at: Mapped[datetime | None]

    organization: Mapped[Organization] = relationship(back_populates="connector_auths")
    connector: Mapped[Connector] = relationship(back_populates="auths")
    user: Mapped[User | None] = relationship()
    triggers: Mapped[list[TriggerConfig]] = relationship(
        back_populates="connector_auth", cascade="all, delete-orphan", passive_deletes=True
    )
    actions: Mapped[list[ActionConfig]] = relationship(
        back_populates="connector_auth", cascade="all, delete-orphan", passive_deletes=True
    )


# --------------------------------------------------------------------------- 0003_automations


class TriggerConfig(UuidPrimaryKey, Timestamps, Base):
    """An automation trigger: an event on an authorised connector (e.g. `message.received`)."""

    __tablename__ = "trigger_configs"
    __table_args__ = (
        UniqueConstraint("connector_auth_id", "name"),
        # Event dispatch: "which enabled triggers listen to this event?"
        Index("trigger_configs_event_idx", "event", postgresql_where=text("is_enabled")),
    )

    connector_auth_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connector_auths.id", ondelete="CASCADE")
    )
    name: Mapped[str]
    event: Mapped[str]
    conditions: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    is_enabled: Mapped[bool] = mapped_column(server_default=true())

    connector_auth: Mapped[ConnectorAuth] = relationship(back_populates="triggers")
    actions: Mapped[list[ActionConfig]] = relationship(
        back_populates="trigger_config",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ActionConfig.position",
    )


class ActionConfig(UuidPrimaryKey, Timestamps, Base):
    """An automation action on an authorised connector (e.g. `send_message`).

    `trigger_config_id` NULL: a stand-alone action (agents call it); set: a step of that
    trigger, run in `position` order, deleted with it (CASCADE).
    """

    __tablename__ = "action_configs"
    __table_args__ = (
        UniqueConstraint("connector_auth_id", "name"),
        CheckConstraint("position >= 0", name="action_configs_position_check"),
        Index("action_configs_trigger_config_id_position_idx", "trigger_config_id", "position"),
    )

    connector_auth_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connector_auths.id", ondelete="CASCADE")
    )
    trigger_config_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("trigger_configs.id", ondelete="CASCADE")
    )
    name: Mapped[str]
    action: Mapped[str]
    params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    position: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    is_enabled: Mapped[bool] = mapped_column(server_default=true())

    connector_auth: Mapped[ConnectorAuth] = relationship(back_populates="actions")
    trigger_config: Mapped[TriggerConfig | None] = relationship(back_populates="actions")


# --------------------------------------------------------------------------- 0004_agents


class Agent(UuidPrimaryKey, Timestamps, Base):
    """An AI agent of an organization (e.g. the Email Campaign agent)."""

    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("organization_id", "slug"),
        CheckConstraint(f"slug ~ '{SLUG_PATTERN}'", name="agents_slug_format_check"),
        CheckConstraint("status IN ('active', 'paused', 'archived')", name="agents_status_check"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    slug: Mapped[str]
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")
    status: Mapped[str] = mapped_column(server_default="active")

    organization: Mapped[Organization] = relationship(back_populates="agents")
    capabilities: Mapped[list[AgentCapability]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", passive_deletes=True
    )
    configs: Mapped[list[AgentConfig]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", passive_deletes=True
    )
    tools: Mapped[list[Tool]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", passive_deletes=True
    )
    memories: Mapped[list[AgentMemory]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", passive_deletes=True
    )


class AgentCapability(UuidPrimaryKey, Timestamps, Base):
    """What an agent can do (`email.compose`, `sms.reply`, …)."""

    __tablename__ = "agent_capabilities"
    __table_args__ = (UniqueConstraint("agent_id", "name"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str] = mapped_column(server_default="")

    agent: Mapped[Agent] = relationship(back_populates="capabilities")


class AgentConfig(UuidPrimaryKey, Timestamps, Base):
    """One named configuration document of an agent (`default`, `quiet_hours`, …)."""

    __tablename__ = "agent_configs"
    __table_args__ = (UniqueConstraint("agent_id", "key"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    key: Mapped[str]
    value: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(server_default="")

    agent: Mapped[Agent] = relationship(back_populates="configs")


class Tool(UuidPrimaryKey, Timestamps, Base):
    """A tool (function) an agent may call; `input_schema` is its JSON Schema."""

    __tablename__ = "tools"
    __table_args__ = (
        UniqueConstraint("agent_id", "name"),
        CheckConstraint("name ~ '^[a-z][a-z0-9_]*$'", name="tools_name_format_check"),
    )

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    name: Mapped[str]
    description: Mapped[str]
    input_schema: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    is_enabled: Mapped[bool] = mapped_column(server_default=true())

    agent: Mapped[Agent] = relationship(back_populates="tools")


# --------------------------------------------------------------------------- 0005_vectors
# `embedding` is NULL until the embedding worker has computed it; IVFFLAT skips NULL vectors.


class BrandVoice(UuidPrimaryKey, Timestamps, Base):
    """A tone-of-voice guide that agents retrieve by similarity before writing."""

    __tablename__ = "brand_voices"
    __table_args__ = (
        UniqueConstraint("organization_id", "name"),
        # A few per organization: few lists.
        ivfflat_cosine_index("brand_voices", lists=10),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    name: Mapped[str]
    guidelines: Mapped[str]
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))


class Message(UuidPrimaryKey, Timestamps, Base):
    """A message received or sent on a channel.

    ON DELETE: organization → CASCADE; connector_auth and agent → SET NULL (the history
    stays; `channel` keeps the platform once the authorisation is gone).
    `(connector_auth_id, external_id)` is unique so that a provider's redelivered webhook is
    an upsert, not a duplicate.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("connector_auth_id", "external_id"),
        CheckConstraint("direction IN ('inbound', 'outbound')", name="messages_direction_check"),
        Index("messages_organization_id_created_at_idx", "organization_id", "created_at"),
        ivfflat_cosine_index("messages", lists=100),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    connector_auth_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("connector_auths.id", ondelete="SET NULL")
    )
    agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), index=True
    )
    channel: Mapped[ConnectorKind] = mapped_column(connector_kind)
    direction: Mapped[str]
    external_id: Mapped[str | None]
    sender: Mapped[str | None]
    recipient: Mapped[str | None]
    subject: Mapped[str | None]
    body: Mapped[str]
    sent_at: Mapped[datetime | None]
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))


class Chunk(UuidPrimaryKey, Timestamps, Base):
    """A piece of a knowledge-base document, for retrieval-augmented generation.

    `(organization_id, source_uri, chunk_index)` is unique: re-ingesting a document upserts.
    """

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("organization_id", "source_uri", "chunk_index"),
        CheckConstraint("chunk_index >= 0", name="chunks_chunk_index_check"),
        CheckConstraint("token_count IS NULL OR token_count >= 0", name="chunks_token_count_check"),
        ivfflat_cosine_index("chunks", lists=100),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    source_uri: Mapped[str]
    chunk_index: Mapped[int] = mapped_column(Integer)
    content: Mapped[str]
    token_count: Mapped[int | None] = mapped_column(Integer)
    attributes: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))


class AgentMemory(UuidPrimaryKey, Timestamps, Base):
    """Something an agent remembers; `message_id` is where it learnt it (SET NULL)."""

    __tablename__ = "agent_memories"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('episodic', 'semantic', 'preference')", name="agent_memories_kind_check"
        ),
        Index("agent_memories_agent_id_created_at_idx", "agent_id", "created_at"),
        ivfflat_cosine_index("agent_memories", lists=100),
    )

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(server_default="episodic")
    content: Mapped[str]
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIM))

    agent: Mapped[Agent] = relationship(back_populates="memories")
    message: Mapped[Message | None] = relationship()
