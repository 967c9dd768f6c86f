"""The store's schema: one migration per version (``PRAGMA user_version``), applied in order by
:class:`gateway.store.Store` when it opens the database."""

from __future__ import annotations

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        unix_user TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        unix_user TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        cluster TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        message TEXT,
        pending_reason TEXT,
        slurm_job_id TEXT,
        slurm_state TEXT,
        exit_code INTEGER,
        node TEXT,
        spec TEXT NOT NULL,
        workdir TEXT NOT NULL,
        idempotency_key TEXT,
        submit_attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        scheduler_reachable INTEGER NOT NULL DEFAULT 1,
        has_notebook INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_seen_at TEXT,
        started_at TEXT,
        ended_at TEXT
    );
    CREATE INDEX jobs_user ON jobs(user_id, created_at);
    CREATE INDEX jobs_state ON jobs(state);
    CREATE UNIQUE INDEX jobs_idempotency ON jobs(user_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        at TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT,
        message TEXT
    );
    CREATE INDEX events_job ON events(job_id, id);
    """,
    # Labs: the server's token (injected upstream by the proxy, never shown), the port the
    # server reported, why the gateway stopped it (idle, start_timeout), last proxied traffic.
    """
    ALTER TABLE jobs ADD COLUMN lab_token TEXT;
    ALTER TABLE jobs ADD COLUMN lab_port INTEGER;
    ALTER TABLE jobs ADD COLUMN stop_reason TEXT;
    ALTER TABLE jobs ADD COLUMN last_activity TEXT;
    """,
    # Lab tokens are derived from the config's secret (gateway.tokens), never stored: a copy
    # of the database opens no lab. Indexes for per-user limits and artifact retention.
    """
    ALTER TABLE jobs DROP COLUMN lab_token;
    ALTER TABLE jobs ADD COLUMN artifacts_removed_at TEXT;
    CREATE INDEX jobs_user_kind_state ON jobs(user_id, kind, state);
    CREATE INDEX jobs_ended ON jobs(ended_at) WHERE ended_at IS NOT NULL;
    """,
    # last_seen_at was never written nor read.
    """
    ALTER TABLE jobs DROP COLUMN last_seen_at;
    """,
    # Users' storage servers for data staging: the pinned host key, the public key to authorize
    # there, the private key sealed (gateway.staging.keys), never in the clear.
    """
    CREATE TABLE storage (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        username TEXT NOT NULL,
        host_key TEXT NOT NULL,
        public_key TEXT NOT NULL,
        sealed_key BLOB NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (user_id, name)
    );
    """,
    # Where a job's copied inputs landed ({parameter: local path}); set once staging is done.
    """
    ALTER TABLE jobs ADD COLUMN staged_inputs TEXT;
    """,
    # A notebook run's last known progress ({"done": N, "total": M} code cells).
    """
    ALTER TABLE jobs ADD COLUMN progress TEXT;
    """,
    # What the request that created the job held (a SHA-256 of it), for Idempotency-Key replays.
    """
    ALTER TABLE jobs ADD COLUMN request_hash TEXT;
    """,
    # A warning about the request (no parameters cell), kept for the job's whole life.
    """
    ALTER TABLE jobs ADD COLUMN warning TEXT;
    """,
    # The admin role, and disabled users (their tokens and sessions authenticate nothing).
    """
    ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN disabled_at TEXT;
    """,
    # What an events row records: a state change ('state'), or a webhook delivery attempt
    # ('webhook', gateway.store.webhooks) that readers of state changes skip.
    """
    ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'state';
    """,
    # Single sign-on sessions: a token nobody is shown, named by the session cookie, ended by
    # logout; it stops working at session_expires_at (API tokens have none).
    """
    ALTER TABLE tokens ADD COLUMN session_expires_at TEXT;
    """,
    # While a job is pending: when Slurm expects it to start (squeue's %S), if it knows.
    """
    ALTER TABLE jobs ADD COLUMN expected_start TEXT;
    """,
    # The single sign-on identity (issuer and subject) a user is bound to at first SSO login.
    """
    ALTER TABLE users ADD COLUMN sso_subject TEXT;
    """,
    # A browser session made by logging in with an API token: a session row of its own (so
    # logout ends it), which also ends with that token.
    """
    ALTER TABLE tokens ADD COLUMN parent_id INTEGER REFERENCES tokens(id);
    """,
]


LAB_TOKENS_DROPPED = 3  # the schema version from which no lab token is stored
