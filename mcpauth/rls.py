"""PostgreSQL row-level security for every ``TenantOwned`` table: the database confines tenants.

**The policy.** Each ``TenantOwned`` table gets row-level security (enabled and forced) with
two policies:

* ``mcpauth_all_roles``, permissive, for every role: rows are visible and writable;
* ``mcpauth_tenant_only``, restrictive, for the restricted role ``MCPAUTH_TENANT_DB_ROLE``
  (default ``mcpauth_tenant``): only rows whose tenant is the transaction's
  ``mcpauth.tenant_id`` setting, for reading and for writing. A session in that role without
  the setting fails every query on those tables instead of seeing anything.

**The switch.** While a governed body runs (``mcpauth.tenant_scope.confined``), every query on a
PostgreSQL connection runs as the restricted role with the tenant set: :func:`ensure` switches
the connection before the body (outside its transaction, so a rollback cannot undo the switch)
and an execute wrapper installed on every connection re-checks before each statement, so ORM
queries, ``raw()`` and ``connection.cursor().execute()`` all see the admitted tenant's rows and
nothing else. Outside a body the connection runs as the role it logged in as: the admin,
commands and migrations see every tenant, which is the explicit, visible bypass (the
``all_tenants`` manager in code, the login role in the database).

**Foreign keys.** A foreign key from one ``TenantOwned`` model to another gets a second,
composite constraint ``(fk, tenant_id) → (target, tenant_id)``, so a row can only point at a row
of its own tenant, whatever wrote it. Foreign-key checks bypass row-level security in
PostgreSQL; this constraint is what stops a row from referencing another tenant's row.

**Platform-only tables.** A model marked ``mcpauth_platform_only`` (the stored downstream
secrets) is the platform's own: the restricted role gets no privilege on its table at all, so
no query of a governed body can read it; the platform reads it in its own context
(``mcpauth.tenant_scope.platform``).

Everything is (re)installed after ``migrate`` (``post_migrate``), idempotently, for every
installed ``TenantOwned`` model: an app gets it by subclassing ``TenantOwned``, nothing else.
``mcpauth.W040`` (a database check: ``manage.py check --database default``) reports a table
whose policy or constraint is missing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

from mcpauth.conf import get_settings
from mcpauth.managers import is_tenant_owned, tenant_column, tenant_relations
from mcpauth.tenant_scope import active_tenant

log = logging.getLogger(__name__)

#: The setting (GUC) that holds the confined tenant's primary key.
TENANT_SETTING = "mcpauth.tenant_id"
POLICY_ALL = "mcpauth_all_roles"
POLICY_TENANT = "mcpauth_tenant_only"
#: Prefix of the composite tenant constraints (a foreign key's and its target's unique key).
CONSTRAINT_PREFIX = "mcpauth_tf_"
UNIQUE_PREFIX = "mcpauth_tu_"

#: A connection's confinement state is unknown (new pooled connection, or switched inside a
#: transaction that may still roll back): the next statement switches it again.
_UNKNOWN: Any = object()
_STATE = "_mcpauth_rls_tenant"
_TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")


def is_enabled(connection: BaseDatabaseWrapper) -> bool:
    return connection.vendor == "postgresql" and get_settings().row_level_security


def tenant_owned_models() -> list[type[Model]]:
    """Every installed concrete, managed ``TenantOwned`` model."""
    return [
        m for m in apps.get_models() if is_tenant_owned(m) and m._meta.managed and not m._meta.proxy
    ]


#: Apps whose tables are the platform's, never a tool body's: users, sessions, the admin log,
#: the audit trail and mcpauth's configuration (except what is granted below).
PLATFORM_APPS = frozenset({"auth", "admin", "sessions", "audit", "mcpauth"})
#: Granted back to the restricted role: a governed sync body writes its audit row in its own
#: transaction (``INSERT … RETURNING id``), and may read its own tenant's row.
AUDIT_TABLE = "audit_auditevent"
TENANT_TABLE = "mcpauth_tenant"


def platform_only_models() -> list[type[Model]]:
    """Every installed model the restricted role gets no privilege on: the platform apps'
    (but the tenant and audit tables, granted narrowly) and models marked
    ``mcpauth_platform_only`` (the stored downstream secrets)."""
    return [
        m
        for m in apps.get_models(include_auto_created=True)
        if getattr(m, "mcpauth_platform_only", False)
        or (
            m._meta.app_label in PLATFORM_APPS
            and m._meta.db_table not in (AUDIT_TABLE, TENANT_TABLE)
            and not is_tenant_owned(m)
        )
    ]


def _name(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"{prefix}{digest}"


# --- switching a connection --------------------------------------------------------------------


def _switch_sql(connection: BaseDatabaseWrapper, tenant_id: int | None) -> tuple[str, list[str]]:
    sql = "SELECT set_config('role', %s, false), set_config(%s, %s, false)"
    if tenant_id is None:
        # Back to the login role (or the role Django assumes on connect).
        role = connection.settings_dict.get("OPTIONS", {}).get("assume_role") or "none"
        return sql, [role, TENANT_SETTING, ""]
    return sql, [get_settings().tenant_db_role, TENANT_SETTING, str(tenant_id)]


def _switch(connection: BaseDatabaseWrapper, cursor: Any, tenant_id: int | None) -> None:
    sql, params = _switch_sql(connection, tenant_id)
    with connection.wrap_database_errors:
        cursor.cursor.execute(sql, params)  # the DB-API cursor: not through the wrappers again
    # A switch made inside a transaction is undone if it rolls back: trust it only until then.
    setattr(connection, _STATE, _UNKNOWN if connection.in_atomic_block else tenant_id)


def _wrapper(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    connection = context["connection"]
    want = active_tenant()
    if getattr(connection, _STATE, _UNKNOWN) != want and not sql.startswith(_TRANSACTION_CONTROL):
        # (savepoint statements touch no table, and must run in an aborted transaction)
        _switch(connection, context["cursor"], want)
    return execute(sql, params, many, context)


def install_wrapper(connection: BaseDatabaseWrapper, **_: Any) -> None:
    """``connection_created``: every PostgreSQL connection checks its confinement per query."""
    if not is_enabled(connection):
        return
    if _wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(_wrapper)
    pooled = bool(connection.settings_dict.get("OPTIONS", {}).get("pool"))
    # A new session runs as its login role; a pooled one may carry a previous user's switch.
    setattr(connection, _STATE, _UNKNOWN if pooled else None)


def ensure(using: str = DEFAULT_DB_ALIAS) -> None:
    """Switch ``using``'s connection to the running body's tenant (or back) now.

    Called by the tool runner before the body's transaction opens, so the switch is not part of
    that transaction; the execute wrapper would otherwise make it at the body's first query.
    """
    connection = connections[using]
    if not is_enabled(connection):
        return
    want = active_tenant()
    if connection.connection is None:
        connection.ensure_connection()
    if getattr(connection, _STATE, _UNKNOWN) == want:
        return
    with connection.cursor() as cursor:
        # The wrapper itself makes the switch before this statement reaches the database.
        cursor.execute("SELECT 1")


# --- installing policies and constraints -----------------------------------------------------


def _needs_dba(role: str, why: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"mcpauth cannot install tenant isolation: {why}. Have a database administrator run "
        f'"CREATE ROLE {role} NOLOGIN NOBYPASSRLS; GRANT {role} TO <the app\'s role>;", '
        "then run migrate again (or set MCPAUTH_TENANT_DB_ROLE to a role that exists)."
    )


def _ensure_role(cursor: Any, role: str) -> None:
    """The restricted role exists and the connecting role may ``SET ROLE`` to it; a clear
    ``ImproperlyConfigured`` naming what a DBA must run when the app's role cannot do it."""
    cursor.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
    is_super, can_create = cursor.fetchone()
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    if cursor.fetchone() is None:
        if not (is_super or can_create):
            raise _needs_dba(role, f"the role {role!r} does not exist and may not be created")
        quoted = '"' + role.replace('"', '""') + '"'
        # Two processes may race to create it (parallel test databases): the loser moves on.
        cursor.execute(
            "DO $$ BEGIN CREATE ROLE "
            + quoted
            + " NOLOGIN NOBYPASSRLS; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    if not is_super:
        cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [role])
        if not cursor.fetchone()[0]:
            cursor.execute(
                "SELECT pg_has_role(current_user, %s, 'MEMBER WITH ADMIN OPTION')", [role]
            )
            if not cursor.fetchone()[0]:
                raise _needs_dba(role, f"this database role is not a member of {role!r}")
            cursor.execute(f'GRANT "{role}" TO CURRENT_USER')


def _policy_sql(table: str, column: str, role: str) -> list[str]:
    check = f"{column} = current_setting('{TENANT_SETTING}')::bigint"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {POLICY_ALL} ON {table}",
        f"CREATE POLICY {POLICY_ALL} ON {table} AS PERMISSIVE TO PUBLIC "
        "USING (true) WITH CHECK (true)",
        f"DROP POLICY IF EXISTS {POLICY_TENANT} ON {table}",
        f'CREATE POLICY {POLICY_TENANT} ON {table} AS RESTRICTIVE TO "{role}" '
        f"USING ({check}) WITH CHECK ({check})",
    ]


def _narrow_grants_sql(qn: Callable[[str], str], role: str) -> list[str]:
    """The audit table: insert only (``RETURNING id`` needs the id). The tenant table: read
    only, and only the body's own tenant's row."""
    audit, tenant = qn(AUDIT_TABLE), qn(TENANT_TABLE)
    own = f"id = current_setting('{TENANT_SETTING}')::bigint"
    return [
        f'REVOKE ALL ON {audit} FROM "{role}"',
        f'GRANT INSERT, SELECT (id) ON {audit} TO "{role}"',
        f'REVOKE ALL ON {tenant} FROM "{role}"',
        f'GRANT SELECT ON {tenant} TO "{role}"',
        f"ALTER TABLE {tenant} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {tenant} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {POLICY_ALL} ON {tenant}",
        f"CREATE POLICY {POLICY_ALL} ON {tenant} AS PERMISSIVE TO PUBLIC "
        "USING (true) WITH CHECK (true)",
        f"DROP POLICY IF EXISTS {POLICY_TENANT} ON {tenant}",
        f'CREATE POLICY {POLICY_TENANT} ON {tenant} AS RESTRICTIVE TO "{role}" USING ({own})',
    ]


def expected_constraints() -> list[tuple[str, str, str]]:
    """``(table, constraint name, ADD CONSTRAINT clause)`` for every composite tenant key."""
    out: list[tuple[str, str, str]] = []
    seen_unique: set[str] = set()
    for model in tenant_owned_models():
        for fk in tenant_relations(model):
            target = fk.related_model._meta
            target_col = str(fk.target_field.column)
            target_tenant = tenant_column(fk.related_model)
            unique = _name(UNIQUE_PREFIX, target.db_table, target_col)
            if unique not in seen_unique:
                seen_unique.add(unique)
                out.append((target.db_table, unique, f'UNIQUE ("{target_col}", "{target_tenant}")'))
            name = _name(CONSTRAINT_PREFIX, model._meta.db_table, fk.column)
            own_tenant = tenant_column(model)
            out.append(
                (
                    model._meta.db_table,
                    name,
                    f'FOREIGN KEY ("{fk.column}", "{own_tenant}") REFERENCES '
                    f'"{target.db_table}" ("{target_col}", "{target_tenant}") '
                    "DEFERRABLE INITIALLY DEFERRED NOT VALID",
                )
            )
    return out


def install(using: str = DEFAULT_DB_ALIAS, *, stdout: Any = None) -> list[str]:
    """Install the role, grants, policies and composite keys on ``using``; idempotent.

    Returns what could not be done completely (an existing row that breaks a composite key:
    the constraint still guards new writes, and ``mcpauth.W040`` names it until fixed).
    """
    connection = connections[using]
    if not is_enabled(connection):
        return []
    conf = get_settings()
    role = conf.tenant_db_role
    problems: list[str] = []
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        _ensure_role(cursor, role)
        cursor.execute("SELECT current_schema()")
        schema = qn(cursor.fetchone()[0])
        for sql in (
            f'GRANT USAGE ON SCHEMA {schema} TO "{role}"',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO "{role}"',
            f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO "{role}"',
        ):
            cursor.execute(sql)
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        existing_tables = {name for (name,) in cursor.fetchall()}
        for model in platform_only_models():
            if model._meta.db_table in existing_tables:  # (a migration may be unapplied)
                cursor.execute(f'REVOKE ALL ON {qn(model._meta.db_table)} FROM "{role}"')
        if {AUDIT_TABLE, TENANT_TABLE} <= existing_tables:
            for sql in _narrow_grants_sql(qn, role):
                cursor.execute(sql)
        for model in tenant_owned_models():
            if model._meta.db_table not in existing_tables:
                continue
            table = qn(model._meta.db_table)
            column = qn(tenant_column(model))
            for sql in _policy_sql(table, column, role):
                cursor.execute(sql)
        cursor.execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE %s",
            [CONSTRAINT_PREFIX.replace("_", r"\_") + "%%"],
        )
        existing = dict(cursor.fetchall())
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conname LIKE %s",
            [UNIQUE_PREFIX.replace("_", r"\_") + "%%"],
        )
        existing.update({name: True for (name,) in cursor.fetchall()})
        for table, name, clause in expected_constraints():
            referenced = re.findall(r'REFERENCES "([^"]+)"', clause)
            if not {table, *referenced} <= existing_tables:
                continue  # (a migration may be unapplied)
            if name not in existing:
                cursor.execute(f"ALTER TABLE {qn(table)} ADD CONSTRAINT {name} {clause}")
                existing[name] = not name.startswith(CONSTRAINT_PREFIX)
            if not existing[name]:
                try:
                    with connection.cursor() as validate, _savepoint(connection):
                        validate.execute(f"ALTER TABLE {qn(table)} VALIDATE CONSTRAINT {name}")
                except Exception as exc:  # existing rows point at another tenant's rows
                    problems.append(
                        f"{table}.{name}: existing rows reference another tenant's rows ({exc})"
                    )
    for problem in problems:
        log.warning("tenant constraint not validated: %s", problem)
        if stdout is not None:
            stdout.write(f"  mcpauth: tenant constraint not validated: {problem}\n")
    return problems


class _savepoint:
    """A savepoint around one statement that may fail (a no-op outside a transaction)."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        self.sid: str | None = None

    def __enter__(self) -> None:
        if self.connection.in_atomic_block:
            self.sid = self.connection.savepoint()

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.sid is None:
            return
        if exc_type is None:
            self.connection.savepoint_commit(self.sid)
        else:
            self.connection.savepoint_rollback(self.sid)


def post_migrate(using: str = DEFAULT_DB_ALIAS, verbosity: int = 1, **_: Any) -> None:
    """``post_migrate`` (sent once per app; installs once, after mcpauth's)."""
    install(using)


def problems(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """What is missing on ``using``: tables without the policies, composite keys not in place."""
    connection = connections[using]
    if not is_enabled(connection):
        return []
    found: list[str] = []
    tables = {m._meta.db_table: m for m in tenant_owned_models()}
    if not tables:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "array(SELECT polname FROM pg_policy p WHERE p.polrelid = c.oid) "
            "FROM pg_class c WHERE c.relkind = 'r' AND c.relname = ANY(%s) "
            "AND c.relnamespace = current_schema()::regnamespace",
            [list(tables)],
        )
        state = {row[0]: row[1:] for row in cursor.fetchall()}
        for table in tables:
            enabled, forced, policies = state.get(table, (False, False, []))
            if not (enabled and forced and {POLICY_ALL, POLICY_TENANT} <= set(policies)):
                found.append(f"table {table} has no tenant row-level security")
        cursor.execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE 'mcpauth\\_t%%'"
        )
        constraints = dict(cursor.fetchall())
        role = get_settings().tenant_db_role
        for model in platform_only_models():
            cursor.execute(
                "SELECT has_table_privilege(r.oid, c.oid, 'SELECT') FROM pg_roles r, pg_class c "
                "WHERE r.rolname = %s AND c.relname = %s "
                "AND c.relnamespace = current_schema()::regnamespace",
                [role, model._meta.db_table],
            )
            if (cursor.fetchone() or (False,))[0]:
                found.append(f"table {model._meta.db_table} is readable by the role {role}")
    for table, name, _clause in expected_constraints():
        if name not in constraints:
            found.append(f"table {table} lacks the composite tenant constraint {name}")
        elif not constraints[name]:
            found.append(
                f"table {table}: constraint {name} is not validated (existing rows reference "
                "another tenant's rows)"
            )
    return found


def cross_tenant_violation(exc: BaseException) -> bool:
    """True when a database error is a tenant policy or composite-key refusal."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        diag = getattr(current, "diag", None)
        name = getattr(diag, "constraint_name", None) or ""
        if name.startswith(CONSTRAINT_PREFIX):
            return True
        text = str(current)
        if "row-level security policy" in text and POLICY_TENANT in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def connections_in_use() -> Iterable[BaseDatabaseWrapper]:
    return connections.all(initialized_only=True)
