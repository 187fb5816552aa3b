"""Re-check the seal chain (:mod:`audit.sealing`) against the rows: ``audit_verify``.

For every seal from the starting one, in id order:

1. its header hashes to ``seal_hash`` and carries a valid Ed25519 signature by a known key;
2. ``prev_hash`` is the previous seal's ``seal_hash`` and its range starts right after the
   previous one's (the first seal of a pruned chain is the anchor: nothing before it is left,
   and an ``audit/prune`` row must record deleting the rows up to it);
3. its index (id runs and digest prefixes) matches ``index_hash``;
4. the rows now in its id range are exactly the indexed ones, each with the same digest, and
   together they give ``rows_hash``.

A difference in (4) is named by row: *changed* (same id, other content), *deleted* (indexed,
gone) or *inserted* (in the range, not indexed). No row may exist below the first seal either.
Rows past the last seal are not sealed yet: counted, not judged.

The chain alone cannot show that its newest seals (with their rows) were removed: whoever can
write SQL can cut the tail and let the sealer sign what follows. ``expect_head`` closes that: a
chain head recorded outside the database (``audit_seal`` prints it) must still be in the chain.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import router

from audit import keys
from audit.models import AuditEvent, AuditSeal
from audit.sealing import (
    DIGEST_PREFIX,
    FIELDS_BY_VERSION,
    GENESIS,
    header_bytes,
    ids_of,
    index_hash,
    row_digest,
    rows_of,
)

#: Problems listed before verification stops looking.
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One finding; ``row_id`` is set when a row is to blame, else the seal is."""

    seal_id: int | None
    message: str
    row_id: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class VerifyReport:
    seals: int = 0
    rows: int = 0
    first_seal: AuditSeal | None = None
    last_seal: AuditSeal | None = None
    #: The chain does not start at genesis: older blocks were pruned.
    pruned_before: bool = False
    unsealed: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: ``seal_hash`` of the newest seal now in the chain
    head: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _seal_problems(
    seal: AuditSeal, prev: AuditSeal | None, public: dict[str, Ed25519PublicKey]
) -> list[Problem]:
    where = f"seal {seal.pk} (rows {seal.first_id}-{seal.last_id})"
    found: list[Problem] = []
    if seal.version not in FIELDS_BY_VERSION:
        return [Problem(seal.pk, f"{where}: unknown seal version {seal.version}")]
    header = header_bytes(seal)
    if hashlib.sha256(header).hexdigest() != seal.seal_hash:
        found.append(Problem(seal.pk, f"{where}: its header was altered (seal_hash mismatch)"))
    key = public.get(seal.key_id)
    if key is None:
        found.append(Problem(seal.pk, f"{where}: signed by unknown key {seal.key_id}"))
    else:
        try:
            key.verify(base64.b64decode(seal.signature, validate=True), header)
        except (InvalidSignature, ValueError):
            found.append(Problem(seal.pk, f"{where}: the signature does not verify"))
    if prev is not None:
        if seal.prev_hash != prev.seal_hash:
            found.append(
                Problem(seal.pk, f"{where}: does not link to seal {prev.pk} (prev_hash mismatch)")
            )
        if seal.first_id != prev.last_id + 1:
            found.append(
                Problem(
                    seal.pk,
                    f"{where}: does not start right after seal {prev.pk} (ends at "
                    f"{prev.last_id}): a seal is missing",
                )
            )
    if index_hash(list(seal.id_runs), bytes(seal.row_index)) != seal.index_hash:
        found.append(Problem(seal.pk, f"{where}: its row index was altered"))
    return found


def _row_problems(seal: AuditSeal, using: str) -> tuple[list[Problem], int]:
    """Compare the rows in the seal's range with its index; (problems, rows read)."""
    where = f"seal {seal.pk}"
    index = bytes(seal.row_index)
    expected: Iterator[tuple[int, bytes]] = (
        (row_id, index[n * DIGEST_PREFIX : (n + 1) * DIGEST_PREFIX])
        for n, row_id in enumerate(ids_of(seal.id_runs))
    )
    actual = (
        (int(row[0]), row_digest(row))
        for row in rows_of(seal.first_id, seal.last_id, using=using, version=seal.version)
    )
    found: list[Problem] = []
    total = hashlib.sha256()
    count = 0
    exp = next(expected, None)
    act = next(actual, None)
    while exp is not None or act is not None:
        if act is not None and (exp is None or act[0] < exp[0]):
            found.append(Problem(seal.pk, f"row {act[0]} was inserted ({where})", act[0]))
            count += 1
            act = next(actual, None)
        elif exp is not None and (act is None or exp[0] < act[0]):
            found.append(Problem(seal.pk, f"row {exp[0]} was deleted ({where})", exp[0]))
            exp = next(expected, None)
        else:
            assert exp is not None and act is not None
            if act[1][:DIGEST_PREFIX] != exp[1]:
                found.append(Problem(seal.pk, f"row {act[0]} was changed ({where})", act[0]))
            total.update(act[1])
            count += 1
            exp, act = next(expected, None), next(actual, None)
        if len(found) >= MAX_PROBLEMS:
            break
    if not found and total.hexdigest() != seal.rows_hash:
        found.append(Problem(seal.pk, f"{where}: its rows do not give rows_hash"))
    return found, count


def start_seal(since: datetime | None, using: str) -> AuditSeal | None:
    seals = AuditSeal.objects.using(using).order_by("first_id")
    if since is not None:
        return seals.filter(last_at__gte=since).first()
    return seals.first()


def verify(
    *,
    since: datetime | None = None,
    expect_head: str | None = None,
    using: str | None = None,
    progress: Callable[[VerifyReport], None] | None = None,
) -> VerifyReport:
    """Check the chain from the first seal (or the first one with rows at/after ``since``).

    With ``expect_head`` (a ``seal_hash`` recorded earlier, outside the database), that seal
    must still be in the chain, and genuine: otherwise seals were removed.
    """
    using = using or router.db_for_read(AuditSeal)
    public = keys.verify_keys()
    report = VerifyReport()
    head = AuditSeal.objects.using(using).order_by("first_id").last()
    report.head = head.seal_hash if head is not None else None
    if expect_head is not None:
        anchored = AuditSeal.objects.using(using).filter(seal_hash=expect_head).first()
        if anchored is None:
            report.problems.append(
                Problem(
                    None,
                    f"the recorded chain head {expect_head[:16]} is no longer in the chain "
                    "(seals were removed)",
                )
            )
        else:
            report.problems.extend(_seal_problems(anchored, None, public))
    first = start_seal(since, using)
    seals = AuditSeal.objects.using(using).order_by("first_id")
    if first is None:
        last = seals.last()
        after = last.last_id if last is not None else 0
        report.unsealed = AuditEvent.objects.using(using).filter(id__gt=after).count()
        return report
    prev = seals.filter(first_id__lt=first.first_id).last()
    if prev is None:
        report.pruned_before = first.prev_hash != GENESIS
        if report.pruned_before and not _prune_recorded(first, using):
            report.problems.append(
                Problem(
                    first.pk,
                    f"the chain starts at seal {first.pk} (rows from {first.first_id}), but no "
                    "audit/prune run records deleting the rows before it",
                )
            )
        below = (
            AuditEvent.objects.using(using)
            .filter(id__lt=first.first_id)
            .order_by("id")
            .values_list("id", flat=True)
            .first()
        )
        if below is not None:
            report.problems.append(
                Problem(first.pk, f"row {below} was inserted before the first seal", below)
            )
    elif since is not None:
        # The link into the checked part: the previous seal itself must be genuine.
        report.problems.extend(_seal_problems(prev, None, public))
    report.first_seal = first
    for seal in _iter_from(seals, first):
        report.problems.extend(_seal_problems(seal, prev, public))
        if seal.version in FIELDS_BY_VERSION:  # else reported: its rows cannot be read back
            problems, count = _row_problems(seal, using)
            report.problems.extend(problems)
            report.rows += count
        report.seals += 1
        report.last_seal = prev = seal
        if progress is not None:
            progress(report)
        if len(report.problems) >= MAX_PROBLEMS:
            del report.problems[MAX_PROBLEMS:]
            break
    last_id = report.last_seal.last_id if report.last_seal is not None else 0
    report.unsealed = AuditEvent.objects.using(using).filter(id__gt=last_id).count()
    return report


def _prune_recorded(first: AuditSeal, using: str) -> bool:
    """Whether an ``audit/prune`` row says the rows just below ``first`` were pruned.

    Each run records the last id it deleted; the newest run's row survives until a later run,
    which records the new start. Removing the oldest blocks any other way leaves no such row.
    """
    return (
        AuditEvent.objects.using(using)
        .filter(method="audit/prune", arguments__last_id=first.first_id - 1)
        .exists()
    )


def _iter_from(seals: Any, first: AuditSeal) -> Iterator[AuditSeal]:
    """The seals from ``first`` on, fetched a few at a time (their indexes are large)."""
    after = first.first_id - 1
    while True:
        chunk = list(seals.filter(first_id__gt=after)[:50])
        if not chunk:
            return
        yield from chunk
        after = chunk[-1].first_id
