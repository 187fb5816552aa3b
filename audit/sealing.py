"""Tamper evidence: the audit trail sealed in id order, in blocks, as a signed hash chain.

The model is CloudTrail's log-file validation: digests, chained, signed, and a command to check
them (:mod:`audit.verify`).

* **Canonical row.** A row is the JSON array of the values of its seal version's fields
  (:data:`FIELDS_BY_VERSION`; new seals: :data:`CANONICAL_FIELDS`, compact, UTF-8, object keys
  sorted, ``created_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), read back from the database as the
  ORM returns it. ``row digest`` = SHA-256 of those bytes. A seal keeps the version it was made
  with, so seals made before a field was added still verify, and new ones cover it.
* **Block.** The rows with ids from the previous block's ``last_id + 1`` to this block's
  ``last_id``, at most ``AUDIT_SEAL_BLOCK_ROWS``. ``rows_hash`` = SHA-256 over the row digests in
  id order. The blocks tile the id space, so every row with an id inside a sealed range must be
  in its block; the id runs and an 8-byte prefix of every row digest (``index_hash`` covers
  both) let verification name the first row that was changed, deleted or inserted.
* **Seal.** A header (:func:`header_bytes`: the version, id range, row count, time range, both
  hashes, the previous seal's hash, the key id and the sealing time) hashed to ``seal_hash``
  and signed with Ed25519 (:mod:`audit.keys`). The next seal stores ``seal_hash`` as its
  ``prev_hash``: a chain, whose first link has ``prev_hash`` = 64 zeros.

:func:`seal_pending` seals every settled row (:mod:`audit.horizon`) that no seal covers yet.
It reads with plain ``SELECT``\\ s and commits one short transaction per block: the seal and the
block's :class:`~audit.models.AuditRollup` counts. Nothing on the request path waits for it.
Two sealers cannot fork the chain: ``prev_hash`` is unique, and on PostgreSQL each block
transaction also takes an advisory lock.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from audit import keys, rollup
from audit.conf import get_settings
from audit.horizon import settled_horizon
from audit.models import AuditEvent, AuditSeal

GENESIS = "0" * 64
#: The fields a version-1 seal covers, in this order.
FIELDS_V1: tuple[str, ...] = (
    "id",
    "created_at",
    "request_id",
    "tenant",
    "client_id",
    "subject",
    "token_id",
    "scopes",
    "method",
    "tool",
    "outcome",
    "status",
    "error_code",
    "error_message",
    "duration_ms",
    "client_ip",
    "user_agent",
    "arguments",
    "actor",
    "trace_id",
)
#: Every seal version and the fields its rows' digests cover. A new field is appended in a new
#: version (the test suite compares the newest with the model); old versions never change.
FIELDS_BY_VERSION: dict[int, tuple[str, ...]] = {
    1: FIELDS_V1,
    2: (*FIELDS_V1, "issuer"),
}
#: The version new seals are made with, and its fields.
VERSION = max(FIELDS_BY_VERSION)
CANONICAL_FIELDS: tuple[str, ...] = FIELDS_BY_VERSION[VERSION]
#: The columns the rollup needs, as positions in a canonical row.
_POS = {name: i for i, name in enumerate(CANONICAL_FIELDS)}
DIGEST_PREFIX = 8
#: An arbitrary constant: the advisory lock that serialises sealers on PostgreSQL.
ADVISORY_LOCK = 0x61756469  # "audi"
Row = Sequence[Any]


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text.encode("utf-8", "surrogatepass")


def canonical_row(row: Row) -> bytes:
    """The bytes a row's digest is taken over (``row`` in :data:`CANONICAL_FIELDS` order)."""
    return _json([timestamp(v) if isinstance(v, datetime) else v for v in row])


def row_digest(row: Row) -> bytes:
    return hashlib.sha256(canonical_row(row)).digest()


def rows_of(
    first_id: int, last_id: int, *, using: str | None = None, version: int = VERSION
) -> Iterator[Row]:
    """The rows with ``first_id <= id <= last_id``, in id order, as canonical tuples of seal
    version ``version``."""
    queryset = AuditEvent.objects.using(using or router.db_for_read(AuditEvent)).filter(
        id__gte=first_id, id__lte=last_id
    )
    fields = FIELDS_BY_VERSION[version]
    return iter(queryset.order_by("id").values_list(*fields).iterator(chunk_size=2000))


def id_runs(ids: Iterable[int]) -> list[list[int]]:
    """``[1, 2, 3, 7, 8]`` → ``[[1, 3], [7, 8]]``."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def ids_of(runs: Iterable[Sequence[int]]) -> Iterator[int]:
    for first, last in runs:
        yield from range(first, last + 1)


def index_hash(runs: list[list[int]], row_index: bytes) -> str:
    return hashlib.sha256(_json(runs) + b"\n" + row_index).hexdigest()


@dataclass
class Block:
    """What one seal covers, as computed from the rows."""

    first_id: int
    last_id: int = 0
    ids: list[int] = field(default_factory=list)
    prefixes: list[bytes] = field(default_factory=list)
    rows_hash: Any = field(default_factory=hashlib.sha256)
    first_at: datetime | None = None
    last_at: datetime | None = None
    counts: Counter[tuple[date, str, str, str, str, str]] = field(default_factory=Counter)

    def add(self, row: Row) -> None:
        digest = row_digest(row)
        row_id = int(row[0])
        self.ids.append(row_id)
        self.last_id = row_id
        self.prefixes.append(digest[:DIGEST_PREFIX])
        self.rows_hash.update(digest)
        created: datetime = row[_POS["created_at"]]
        if self.first_at is None or created < self.first_at:
            self.first_at = created
        if self.last_at is None or created > self.last_at:
            self.last_at = created
        self.counts[rollup.key_of(row, _POS)] += 1

    @property
    def runs(self) -> list[list[int]]:
        return id_runs(self.ids)

    @property
    def row_index(self) -> bytes:
        return b"".join(self.prefixes)


def header_bytes(seal: AuditSeal) -> bytes:
    """The signed content of a seal: every field but the signature and the derived index."""
    return _json(
        {
            "v": seal.version,
            "first_id": seal.first_id,
            "last_id": seal.last_id,
            "row_count": seal.row_count,
            "first_at": timestamp(seal.first_at),
            "last_at": timestamp(seal.last_at),
            "rows_hash": seal.rows_hash,
            "index_hash": seal.index_hash,
            "prev_hash": seal.prev_hash,
            "key_id": seal.key_id,
            "sealed_at": timestamp(seal.sealed_at),
        }
    )


def seal_hash(seal: AuditSeal) -> str:
    return hashlib.sha256(header_bytes(seal)).hexdigest()


def make_seal(block: Block, prev: AuditSeal | None) -> AuditSeal:
    """A signed, unsaved seal for ``block``, linked to ``prev``."""
    private = keys.signing_key()
    runs, row_index = block.runs, block.row_index
    seal = AuditSeal(
        version=VERSION,
        first_id=block.first_id,
        last_id=block.last_id,
        row_count=len(block.ids),
        first_at=block.first_at,
        last_at=block.last_at,
        id_runs=runs,
        row_index=row_index,
        index_hash=index_hash(runs, row_index),
        rows_hash=block.rows_hash.hexdigest(),
        prev_hash=prev.seal_hash if prev is not None else GENESIS,
        key_id=keys.key_id(private.public_key()),
        sealed_at=timezone.now(),
    )
    header = header_bytes(seal)
    seal.seal_hash = hashlib.sha256(header).hexdigest()
    seal.signature = base64.b64encode(private.sign(header)).decode()
    return seal


def head(using: str | None = None) -> AuditSeal | None:
    """The newest seal."""
    return (
        AuditSeal.objects.using(using or router.db_for_read(AuditSeal)).order_by("-last_id").first()
    )


class SealConflict(Exception):
    """Another sealer extended the chain meanwhile."""


@dataclass
class SealReport:
    seals: list[AuditSeal] = field(default_factory=list)
    horizon: int = 0
    #: Rows past the horizon, not sealed in this run because they are too recent.
    waiting: int = 0

    @property
    def rows(self) -> int:
        return sum(s.row_count for s in self.seals)


def _lock(using: str) -> None:
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK])


def seal_pending(
    *,
    block_rows: int | None = None,
    max_blocks: int | None = None,
    now: datetime | None = None,
    using: str | None = None,
) -> SealReport:
    """Seal every settled, unsealed row, one transaction per block; return what was sealed."""
    using = using or router.db_for_write(AuditSeal)
    block_rows = block_rows or get_settings().seal_block_rows
    keys.signing_key()  # fail before reading anything when there is no key
    report = SealReport()
    prev = head(using)
    start = prev.last_id + 1 if prev is not None else 1
    report.horizon = horizon = settled_horizon(start - 1, now=now, using=using)
    while horizon >= start and (max_blocks is None or len(report.seals) < max_blocks):
        block = Block(first_id=start)
        queryset = AuditEvent.objects.using(using).filter(id__gte=start, id__lte=horizon)
        rows = queryset.order_by("id").values_list(*CANONICAL_FIELDS)[:block_rows]
        for row in rows.iterator(chunk_size=2000):
            block.add(row)
        if not block.ids:
            break
        with transaction.atomic(using=using):
            _lock(using)
            current = head(using)
            if (current.pk if current else None) != (prev.pk if prev else None):
                raise SealConflict("another audit_seal extended the chain meanwhile")
            seal = make_seal(block, prev)
            try:
                with transaction.atomic(using=using):
                    seal.save(using=using)
            except IntegrityError:
                raise SealConflict("another audit_seal extended the chain meanwhile") from None
            rollup.add(block.counts, using=using)
        report.seals.append(seal)
        prev, start = seal, seal.last_id + 1
    report.waiting = AuditEvent.objects.using(using).filter(id__gte=start).count()
    return report


def status(using: str | None = None) -> dict[str, Any]:
    """The seal status the overview shows: last sealed id, unsealed rows, the chain's head."""
    using = using or router.db_for_read(AuditSeal)
    last = head(using)
    last_id = last.last_id if last is not None else 0
    unsealed = AuditEvent.objects.using(using).filter(id__gt=last_id).count()
    return {
        "last_sealed_id": last_id if last is not None else None,
        "unsealed": unsealed,
        "seals": AuditSeal.objects.using(using).count(),
        "last_sealed_at": last.sealed_at if last is not None else None,
        "head_hash": last.seal_hash if last is not None else None,
        "key_id": last.key_id if last is not None else None,
    }
