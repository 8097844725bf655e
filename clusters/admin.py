"""The "Open clusters" view: clusters of one tenant's tickets, with dismiss, split and link in SDP."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from clusters import services
from clusters.models import ClusterCandidate, OutageCluster
from clusters.render import ticket_link_html
from project.admin_helpers import acting_user

CHART_BUCKETS = 12


def arrivals_svg(times: list[Any], *, width: int = 360, height: int = 60) -> SafeString:
    """Return a bar chart of ticket arrivals over the cluster's span (server-side SVG, no script)."""
    if not times:
        return format_html("<span>{}</span>", "no tickets")
    first, last = min(times), max(times)
    span = max((last - first).total_seconds(), 60.0)
    counts = [0] * CHART_BUCKETS
    for t in times:
        counts[min(CHART_BUCKETS - 1, int((t - first).total_seconds() / span * CHART_BUCKETS))] += 1
    top = max(counts)
    bar = width / CHART_BUCKETS
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="#c62828"><title>{} tickets</title></rect>',
        (
            (round(i * bar + 1, 1), round(height - 14 - (c / top) * (height - 18), 1), round(bar - 2, 1),
             round((c / top) * (height - 18), 1), c)
            for i, c in enumerate(counts)
        ),
    )  # fmt: skip
    minutes = round(span / 60)
    return format_html(
        '<svg class="te-arrivals" role="img" aria-label="Arrivals over {} minutes" width="{}" height="{}" '
        'viewBox="0 0 {} {}">{}<text x="0" y="{}" font-size="10" fill="#555">{}</text>'
        '<text x="{}" y="{}" font-size="10" fill="#555" text-anchor="end">{} ({} min)</text></svg>',
        minutes, width, height, width, height, bars, height - 2, f"{first:%H:%M}", width, height - 2,
        f"{last:%H:%M}", minutes,
    )  # fmt: skip


def _ticket_cell(candidate: ClusterCandidate) -> SafeString:
    ticket = candidate.ticket
    return format_html("{} {}", ticket_link_html(ticket.tenant, ticket.sdp_id), ticket.subject[:80])


def _followup_label(candidate: ClusterCandidate) -> str:
    if not candidate.followup_status:
        return "said in its own note"
    return candidate.get_followup_status_display()


@admin.register(OutageCluster)
class OutageClusterAdmin(admin.ModelAdmin):
    """Support leads see each storm as one row and act on it."""

    list_display = (
        "tenant",
        "status",
        "size",
        "first_ticket",
        "last_ticket",
        "first_at",
        "last_at",
        "words",
        "assets",
        "arrivals",
    )
    list_filter = ("status", "tenant")
    list_select_related = ("tenant",)
    ordering = ("-last_at",)
    actions = ("dismiss_selected",)
    change_form_template = "admin/clusters/outagecluster/change_form.html"
    fields = (
        "tenant", "status", "size", "first_at", "last_at", "formed_at", "words", "assets", "arrivals",
        "members_table", "linked_at", "link_error", "dismissed_by", "dismissed_at",
    )  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Clusters are formed by the worker, never by hand."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OutageCluster | None = None) -> bool:
        """Dismiss instead: the record of a storm is kept."""
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        """Open clusters by default ("Open clusters"); the filter shows the dismissed ones too."""
        if not any(key.startswith("status") for key in request.GET) and "_changelist_filters" not in request.GET:
            return HttpResponseRedirect(f"{request.path}?status__exact=open")
        return super().changelist_view(request, {**(extra_context or {}), "title": "Open clusters"})

    def _members(self, obj: OutageCluster) -> list[ClusterCandidate]:
        if not hasattr(obj, "_te_members"):
            obj._te_members = list(  # type: ignore[attr-defined]
                obj.members.select_related("ticket", "ticket__tenant").order_by("at", "id")
            )
        return obj._te_members  # type: ignore[attr-defined]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Return the clusters with what the list shows."""
        return super().get_queryset(request).prefetch_related("members__ticket__tenant")

    @admin.display(description="First ticket")
    def first_ticket(self, obj: OutageCluster) -> SafeString | str:
        """Return the earliest ticket."""
        members = sorted(obj.members.all(), key=lambda m: (m.at, m.pk))
        return _ticket_cell(members[0]) if members else "–"

    @admin.display(description="Last ticket")
    def last_ticket(self, obj: OutageCluster) -> SafeString | str:
        """Return the latest ticket."""
        members = sorted(obj.members.all(), key=lambda m: (m.at, m.pk))
        return _ticket_cell(members[-1]) if members else "–"

    @admin.display(description="Common words")
    def words(self, obj: OutageCluster) -> str:
        """Return the words most of the tickets share."""
        return ", ".join(obj.common_words) or "–"

    @admin.display(description="Assets, hosts and IPs")
    def assets(self, obj: OutageCluster) -> str:
        """Return the hosts several tickets name."""
        return ", ".join(obj.hosts) or "–"

    @admin.display(description="Arrivals")
    def arrivals(self, obj: OutageCluster) -> SafeString:
        """Return the arrivals chart."""
        return arrivals_svg([m.at for m in obj.members.all()])

    @admin.display(description="Tickets")
    def members_table(self, obj: OutageCluster) -> SafeString:
        """Return the member tickets with their follow-up state and a split button each."""
        split = reverse("admin:clusters_outagecluster_split", args=[obj.pk])
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>"
            '<button type="submit" class="button" formmethod="post" formaction="{}?ticket={}">Split out</button>'
            "</td></tr>",
            (
                (_ticket_cell(m), f"{m.at:%Y-%m-%d %H:%M}", _followup_label(m), split, m.ticket_id)
                for m in self._members(obj)
            ),
        )  # fmt: skip
        return format_html(
            "<table><thead><tr><th>Ticket</th><th>Created</th><th>Follow-up note</th><th></th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    # --- actions --------------------------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        """Return the admin URLs plus dismiss, split and link."""
        wrap = self.admin_site.admin_view
        own = [
            path("<uuid:object_id>/dismiss/", wrap(self.dismiss_view), name="clusters_outagecluster_dismiss"),
            path("<uuid:object_id>/split/", wrap(self.split_view), name="clusters_outagecluster_split"),
            path("<uuid:object_id>/link/", wrap(self.link_view), name="clusters_outagecluster_link"),
        ]
        return own + super().get_urls()

    def _action(self, request: HttpRequest, object_id: Any) -> OutageCluster:
        if request.method != "POST":
            raise PermissionDenied("Cluster actions are POST only.")
        obj = get_object_or_404(OutageCluster, pk=object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def _back(self, obj: OutageCluster) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:clusters_outagecluster_change", args=[obj.pk]))

    def dismiss_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Mark the cluster as not one outage."""
        obj = self._action(request, object_id)
        if services.cluster_dismiss(cluster_id=str(obj.pk), user=acting_user(request)):
            self.message_user(request, "Dismissed: no more tickets join it and no follow-ups are posted.")
            self.log_change(request, obj, "Dismissed")
        else:
            self.message_user(request, "Nothing done: the cluster is not open.", messages.WARNING)
        return self._back(obj)

    def split_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Take one ticket out of the cluster."""
        obj = self._action(request, object_id)
        ticket_id = request.GET.get("ticket") or request.POST.get("ticket") or ""
        if ticket_id.isdigit() and services.cluster_split(cluster_id=str(obj.pk), ticket_id=int(ticket_id)):
            self.message_user(request, "Split out: that ticket is no longer part of this or any cluster.")
            self.log_change(request, obj, f"Split out ticket {ticket_id}")
        else:
            self.message_user(request, "Nothing done: that ticket is not in this cluster.", messages.WARNING)
        return self._back(obj)

    def link_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Link the cluster's requests to the first one in SDP (a network call, outside any transaction)."""
        obj = self._action(request, object_id)
        result = services.cluster_link_requests(cluster_id=str(obj.pk))
        self.message_user(request, result.message, messages.SUCCESS if result.ok else messages.ERROR)
        if result.ok:
            self.log_change(request, obj, result.message)
        return self._back(obj)

    @admin.action(description="Dismiss the selected clusters", permissions=["change"])
    def dismiss_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Dismiss several clusters at once."""
        done = sum(services.cluster_dismiss(cluster_id=str(c.pk), user=acting_user(request)) for c in queryset[:100])
        self.message_user(request, f"Dismissed {done} cluster(s).")
