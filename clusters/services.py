"""The cluster check (in the worker, never on the webhook's hot path), follow-up notes, and the lead's actions."""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString

from clusters.models import ClusterCandidate, OutageCluster
from clusters.render import ticket_link_html
from clusters.similarity import Signature, compare, signature
from tickets import embeddings
from tickets.indexing import ticket_index
from tickets.models import Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError

if TYPE_CHECKING:
    from django_q.brokers import Broker

logger = logging.getLogger(__name__)

TASK_FOLLOWUP = "clusters.tasks.post_followup"
# The most recent candidates a check compares with: a storm of thousands in one window is still one cluster, and
# the check stays bounded.
MAX_NEIGHBOURS = 500
SECOND_HOP_FLOOR = 0.25  # text similarity with the new ticket a second-hop ticket needs
MAX_SECOND_HOP = 200  # unclustered tickets examined for a second-hop match when forming a cluster
MAX_LISTED = 10
NEIGHBOUR_FIELDS = (
    "id", "tenant_id", "at", "signature", "cluster_id", "excluded", "cluster__id", "cluster__status",
    "ticket__id", "ticket__embedding", "ticket__embedding_model",
)  # fmt: skip  # tickets named in a note; the rest are counted
FOLLOWUP_STUCK_AFTER = timedelta(minutes=2)
FOLLOWUP_MAX_ATTEMPTS = 6
MARKER_PREFIX = "ticket-enhancer:"  # the prefix every note of ours carries (enhancements.render uses it too)


def _ticket_link(ticket: Ticket) -> SafeString:
    """Return "#id" linked to the request in the tenant's SDP (escaped HTML)."""
    return ticket_link_html(ticket.tenant, ticket.sdp_id)


def _followup_marker(followup_id: str) -> str:
    """Return the hidden marker of a follow-up note."""
    return f"<!-- {MARKER_PREFIX}followup-{followup_id} -->"


@dataclass(frozen=True)
class ClusterMention:
    """What a clustered ticket's note says first: the other tickets and the span they arrived in."""

    cluster_id: str
    others: list[tuple[str, str]]  # (sdp id, subject), earliest first
    total_others: int
    minutes: int
    latest: bool  # whether this ticket is the latest of the cluster (then "in the last N minutes")

    def to_json(self) -> dict[str, Any]:
        """Return the mention as stored in an enhancement's context."""
        return {
            "cluster_id": self.cluster_id,
            "others": [{"sdp_id": s, "subject": t} for s, t in self.others],
            "total_others": self.total_others,
            "minutes": self.minutes,
            "latest": self.latest,
        }


def _ticket_time(ticket: Ticket) -> datetime:
    return ticket.sdp_created_at or ticket.created_at or timezone.now()


def _minutes(first: datetime, last: datetime) -> int:
    return max(1, math.ceil((last - first).total_seconds() / 60))


def _embedding(ticket: Ticket) -> np.ndarray | None:
    """Return the ticket's stored embedding when it is from the configured model (tickets/embeddings.py)."""
    model = embeddings.current_model()
    if not model or ticket.embedding is None or ticket.embedding_model != model:
        return None
    return embeddings.vector_unpack(ticket.embedding)


def _mention(cluster: OutageCluster, row: ClusterCandidate) -> ClusterMention:
    members = list(
        cluster.members.exclude(pk=row.pk)
        .select_related("ticket")
        .order_by("at", "id")
        .only("at", "ticket__sdp_id", "ticket__subject")
    )
    times = [m.at for m in members] + [row.at]
    return ClusterMention(
        cluster_id=str(cluster.pk),
        others=[(m.ticket.sdp_id, m.ticket.subject) for m in members[:MAX_LISTED]],
        total_others=len(members),
        minutes=_minutes(min(times), max(times)),
        latest=row.at >= max(times),
    )


def _refresh_summary(cluster: OutageCluster) -> None:
    members = list(cluster.members.only("at", "signature"))
    cluster.size = len(members)
    if members:
        cluster.first_at = min(m.at for m in members)
        cluster.last_at = max(m.at for m in members)
    words: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    for m in members:
        words.update(set(m.signature.get("w", [])))
        hosts.update(set(m.signature.get("h", [])))
    need = max(2, math.ceil(len(members) / 2))
    cluster.common_words = [w for w, n in words.most_common(12) if n >= need]
    cluster.hosts = [h for h, n in hosts.most_common(12) if n >= 2]
    cluster.save(update_fields=["size", "first_at", "last_at", "common_words", "hosts"])


def cluster_check(*, ticket: Ticket, asset_names: list[str] | tuple[str, ...] = ()) -> ClusterMention | None:
    """Record the ticket as a candidate and return its cluster's mention when it belongs to an open cluster.

    Joining an open cluster returns the mention for the ticket's own note; reaching the threshold forms a cluster
    and queues one follow-up note for each earlier member (their notes were written before it existed).
    """
    tenant = ticket.tenant
    # Embed the new ticket first (outside the transaction: the provider may be remote); a failure leaves the
    # comparison to words and hosts.
    ticket = ticket_index(ticket=ticket)
    sig = signature(ticket.subject, ticket.description, asset_names=asset_names)
    sig.embedding = _embedding(ticket)
    at = _ticket_time(ticket)
    window = timedelta(minutes=tenant.cluster_window_minutes)
    followups: list[int] = []
    with transaction.atomic():
        # One check at a time per tenant, so two tickets of one storm processed at once cannot form two clusters.
        Tenant.objects.select_for_update().filter(pk=tenant.pk).values_list("pk", flat=True).first()
        row, _ = ClusterCandidate.objects.get_or_create(
            ticket=ticket, defaults={"tenant": tenant, "at": at, "signature": sig.to_json()}
        )
        if row.excluded:
            return None
        if row.cluster_id is not None:
            # A re-run or a retried attempt: the ticket's cluster is already decided.
            cluster = OutageCluster.objects.get(pk=row.cluster_id)
            return _mention(cluster, row) if cluster.status == OutageCluster.Status.OPEN else None
        neighbours = list(
            ClusterCandidate.objects.filter(tenant=tenant, at__gte=at - window, at__lte=at + window, excluded=False)
            .exclude(pk=row.pk)
            .select_related("cluster", "ticket")
            # Only what the comparison reads: a ticket's description and raw payload can be large.
            .only(*NEIGHBOUR_FIELDS)
            .order_by("-at")[:MAX_NEIGHBOURS]
        )
        matches = []
        for other in neighbours:
            match = compare(sig, Signature.from_json(other.signature, _embedding(other.ticket)))
            if match.same:
                matches.append((other, match))
        open_clusters: dict[uuid.UUID, list[float]] = defaultdict(list)
        for other, match in matches:
            if other.cluster is not None and other.cluster.status == OutageCluster.Status.OPEN:
                open_clusters[other.cluster.pk].append(match.score)
        now = timezone.now()
        if open_clusters:
            best = max(open_clusters, key=lambda c: (len(open_clusters[c]), sum(open_clusters[c])))
            cluster = OutageCluster.objects.get(pk=best)
            ClusterCandidate.objects.filter(pk=row.pk).update(cluster=cluster, joined_at=now)
            row.cluster = cluster
            _refresh_summary(cluster)
            return _mention(cluster, row)
        loose = _loose_group(
            sig,
            [other for other, _ in matches if other.cluster_id is None],
            [other for other in neighbours if other.cluster_id is None],
            tenant.cluster_threshold - 1,
        )
        if len(loose) + 1 < tenant.cluster_threshold:
            return None
        times = [o.at for o in loose] + [at]
        cluster = OutageCluster.objects.create(tenant=tenant, first_at=min(times), last_at=max(times))
        ClusterCandidate.objects.filter(pk=row.pk).update(cluster=cluster, joined_at=now)
        dry_run = not tenant.has_sdp_credentials
        for other in loose:
            ClusterCandidate.objects.filter(pk=other.pk).update(
                cluster=cluster,
                joined_at=now,
                followup_id=uuid.uuid4(),
                followup_status=ClusterCandidate.Followup.SKIPPED if dry_run else ClusterCandidate.Followup.PENDING,
            )
            followups.append(other.pk)
        row.cluster = cluster
        _refresh_summary(cluster)
        logger.info("outage cluster %s formed with %d tickets", cluster.pk, cluster.size)
        if not dry_run:
            transaction.on_commit(lambda: [followup_enqueue(candidate_id=pk) for pk in followups])
        return _mention(cluster, row)


def _loose_group(
    new: Signature, direct: list[ClusterCandidate], pool: list[ClusterCandidate], need: int
) -> list[ClusterCandidate]:
    """Return the direct matches, plus unclustered tickets linked to them when that is not enough.

    A storm's tickets are worded differently: the newest one may match only some of the earlier ones, which match
    each other. A second-hop ticket must match two of the direct ones (or the only one) and still resemble the new
    ticket somewhat, which keeps two different problems that share a word apart.
    """
    if len(direct) >= need or not direct:
        return direct
    chosen = {c.pk for c in direct}
    signatures = {c.pk: Signature.from_json(c.signature, _embedding(c.ticket)) for c in direct}
    extra = []
    for other in pool[:MAX_SECOND_HOP]:
        if other.pk in chosen:
            continue
        sig = Signature.from_json(other.signature, _embedding(other.ticket))
        links = sum(compare(sig, signatures[pk]).same for pk in signatures)
        if links >= min(2, len(direct)) and compare(sig, new).score >= SECOND_HOP_FLOOR:
            extra.append(other)
    return direct + extra


# --- follow-up notes --------------------------------------------------------------------------
@functools.cache
def _broker() -> Broker:
    from django_q.brokers import get_broker

    return get_broker()


def followup_enqueue(*, candidate_id: int) -> bool:
    """Hand a follow-up note to the task queue; the sweep retries when the broker is down."""
    from django_q.tasks import async_task

    try:
        async_task(TASK_FOLLOWUP, candidate_id, task_name=f"cluster-followup-{candidate_id}", broker=_broker())
        return True
    except Exception:
        logger.exception("could not enqueue cluster follow-up %s; the sweep will pick it up", candidate_id)
        return False


def followup_render(*, candidate: ClusterCandidate) -> str:
    """Return the short follow-up note for a ticket that joined a cluster after its own note was written."""
    cluster = candidate.cluster
    assert cluster is not None
    others = list(cluster.members.exclude(pk=candidate.pk).select_related("ticket").order_by("at", "id"))
    listed = format_html_join(", ", "{}", ((_ticket_link(o.ticket),) for o in others[:MAX_LISTED]))
    more = f" and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else ""
    minutes = _minutes(cluster.first_at, cluster.last_at)
    body = format_html(
        "<div><p><b>Ticket Enhancer: probable outage.</b> Since this ticket's note, {} other tickets within {} "
        "minutes turned out to look like the same problem: {}{}. Probably one outage; check them together.</p>"
        '<p style="color:#777;font-size:11px">Outage cluster {} · Visible to technicians only.</p></div>',
        len(others),
        minutes,
        listed,
        more,
        str(cluster.pk),
    )
    return str(body) + _followup_marker(escape(str(candidate.followup_id)))


def followup_post(*, candidate_id: int) -> str:
    """Post one pending follow-up note exactly once; return the resulting follow-up status."""
    now = timezone.now()
    claimable = Q(followup_started_at__isnull=True) | Q(followup_started_at__lt=now - FOLLOWUP_STUCK_AFTER)
    # Record the attempt before calling SDP; a crash leaves a row that says a post may have happened.
    claimed = ClusterCandidate.objects.filter(claimable, pk=candidate_id, followup_status="pending").update(
        followup_started_at=now
    )
    if not claimed:
        return "skipped"
    row = ClusterCandidate.objects.select_related("ticket", "tenant", "cluster").get(pk=candidate_id)
    attempts = row.followup_attempts + 1
    ClusterCandidate.objects.filter(pk=row.pk).update(followup_attempts=attempts)
    if row.cluster is None or row.cluster.status != OutageCluster.Status.OPEN:
        ClusterCandidate.objects.filter(pk=row.pk).update(followup_status="", followup_error="Cluster dismissed.")
        return ""
    marker_id = str(row.followup_id)
    try:
        with servicedesk_client(tenant=row.tenant) as client:
            if attempts > 1:
                for note in client.list_notes(row.ticket.sdp_id):
                    if marker_id in str(note.get("description", "")):
                        return _followup_done(row, str(note.get("id", "")))
            note = client.add_note(row.ticket.sdp_id, followup_render(candidate=row))
    except ServiceDeskError as exc:
        if exc.permanent or attempts >= FOLLOWUP_MAX_ATTEMPTS:
            ClusterCandidate.objects.filter(pk=row.pk).update(
                followup_status="failed", followup_error=f"ServiceDesk Plus: {exc}"[:2000]
            )
            return "failed"
        # Left pending with its start time: the sweep retries it once FOLLOWUP_STUCK_AFTER has passed.
        ClusterCandidate.objects.filter(pk=row.pk).update(followup_error=f"Will retry: ServiceDesk Plus: {exc}"[:2000])
        return "pending"
    return _followup_done(row, str(note.get("id", "")))


def _followup_done(row: ClusterCandidate, note_id: str) -> str:
    ClusterCandidate.objects.filter(pk=row.pk).update(
        followup_status="posted", followup_note_id=note_id, followup_posted_at=timezone.now(), followup_error=""
    )
    logger.info("cluster follow-up posted to SDP request %s", row.ticket.sdp_id)
    return "posted"


def followup_sweep(*, limit: int = 200) -> int:
    """Re-enqueue follow-up notes that are pending and not in flight (lost by the broker or to retry)."""
    stale = timezone.now() - FOLLOWUP_STUCK_AFTER
    due = ClusterCandidate.objects.filter(followup_status="pending").filter(
        Q(followup_started_at__isnull=True, joined_at__lt=stale) | Q(followup_started_at__lt=stale)
    )
    count = 0
    for pk in due.values_list("pk", flat=True)[:limit]:
        count += followup_enqueue(candidate_id=pk)
    return count


# --- a lead's actions -------------------------------------------------------------------------
def cluster_dismiss(*, cluster_id: str, user: User | None) -> bool:
    """Mark an open cluster dismissed (not one outage): no more tickets join it and no follow-ups are posted."""
    with transaction.atomic():
        done = OutageCluster.objects.filter(pk=cluster_id, status=OutageCluster.Status.OPEN).update(
            status=OutageCluster.Status.DISMISSED, dismissed_by=user, dismissed_at=timezone.now()
        )
        if done:
            ClusterCandidate.objects.filter(cluster__pk=cluster_id, followup_status="pending").update(
                followup_status="", followup_error="Cluster dismissed before the follow-up was posted."
            )
    return bool(done)


def cluster_split(*, cluster_id: str, ticket_id: int) -> bool:
    """Take one ticket out of a cluster for good; return whether it was a member."""
    with transaction.atomic():
        cluster = OutageCluster.objects.select_for_update().filter(pk=cluster_id).first()
        if cluster is None:
            return False
        done = ClusterCandidate.objects.filter(cluster=cluster, ticket_id=ticket_id).update(
            cluster=None, excluded=True, followup_status=""
        )
        if done:
            _refresh_summary(cluster)
    return bool(done)


@dataclass(frozen=True)
class LinkResult:
    """The outcome of linking a cluster's requests in SDP."""

    ok: bool
    message: str


def cluster_link_requests(*, cluster_id: str) -> LinkResult:
    """Link every other request of the cluster to its first one in SDP (POST .../link_requests)."""
    cluster = OutageCluster.objects.select_related("tenant").get(pk=cluster_id)
    if not cluster.tenant.has_sdp_credentials:
        return LinkResult(False, "The tenant has no SDP credentials (dry run): nothing to link.")
    members = list(cluster.members.select_related("ticket").order_by("at", "id"))
    if len(members) < 2:
        return LinkResult(False, "The cluster has fewer than two tickets.")
    first, others = members[0].ticket, [m.ticket.sdp_id for m in members[1:]]
    comment = f"Ticket Enhancer outage cluster {cluster.pk}: these requests look like one problem."
    try:
        with servicedesk_client(tenant=cluster.tenant) as client:
            client.link_requests(first.sdp_id, others, comments=comment)
    except ServiceDeskError as exc:
        OutageCluster.objects.filter(pk=cluster.pk).update(link_error=f"ServiceDesk Plus: {exc}"[:2000])
        return LinkResult(False, f"Not linked: ServiceDesk Plus: {exc}")
    OutageCluster.objects.filter(pk=cluster.pk).update(linked_at=timezone.now(), link_error="")
    return LinkResult(True, f"Linked {len(others)} requests to #{first.sdp_id} in SDP.")


def cluster_count_open(*, tenant: Tenant | None = None) -> int:
    """Return how many clusters are open (for the dashboard)."""
    qs = OutageCluster.objects.filter(status=OutageCluster.Status.OPEN)
    return qs.filter(tenant=tenant).count() if tenant is not None else qs.count()
