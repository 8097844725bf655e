"""The read API: enhancements (list, detail) and feedback, with per-tenant tokens; OpenAPI docs."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import drf_spectacular_sidecar
from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import cache_control
from django.views.static import serve
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework import authentication, exceptions, mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from enhancements import services
from enhancements.authentication import TenantTokenAuthentication, TokenUser
from enhancements.models import ApiToken, Enhancement
from enhancements.serializers import (
    EnhancementDetailSerializer,
    EnhancementFilterSerializer,
    EnhancementListSerializer,
    ErrorSerializer,
    FeedbackInSerializer,
    FeedbackOutSerializer,
)

DOCS_ASSETS = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar"


_UNAUTHORIZED = OpenApiResponse(ErrorSerializer, description="not_authenticated or authentication_failed")
_FORBIDDEN = OpenApiResponse(ErrorSerializer, description="permission_denied (a signed-in user without the permission)")
_NOT_FOUND = OpenApiResponse(ErrorSerializer, description="not_found (also another tenant's enhancement; no such page)")
_INVALID = OpenApiResponse(ErrorSerializer, description="invalid_payload (with `fields`) or invalid_json")


class TenantTokenScheme(OpenApiAuthenticationExtension):
    """Describe the tenant token in the OpenAPI schema."""

    target_class = "enhancements.authentication.TenantTokenAuthentication"
    name = "tenantToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        """Return the security scheme."""
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>`: an API token created in admin; it sees one tenant only.",
        }


class CanReadEnhancements(permissions.BasePermission):
    """Tenant tokens; or signed-in users with the view (and, to rate, add-feedback) permission."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Return whether the caller may use this endpoint."""
        user = request.user
        if isinstance(user, TokenUser):
            return True
        if user is None or not user.is_authenticated:
            return False
        if getattr(view, "action", None) == "feedback":
            return user.has_perm("enhancements.add_feedback")
        return user.has_perm("enhancements.view_enhancement")


class EnhancementPagination(PageNumberPagination):
    """Page numbers, with an optional page_size up to 200."""

    page_size_query_param = "page_size"
    max_page_size = 200


@extend_schema_view(
    list=extend_schema(
        parameters=[EnhancementFilterSerializer],
        responses={200: EnhancementListSerializer, 400: _INVALID, 401: _UNAUTHORIZED, 403: _FORBIDDEN, 404: _NOT_FOUND},
        summary="List enhancements, newest first",
    ),
    retrieve=extend_schema(
        responses={200: EnhancementDetailSerializer, 401: _UNAUTHORIZED, 403: _FORBIDDEN, 404: _NOT_FOUND},
        summary="One enhancement with its note, output, context and timings",
    ),
)
class EnhancementViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Enhancements the caller may see: a tenant token sees its tenant's only."""

    authentication_classes = [TenantTokenAuthentication, authentication.SessionAuthentication]
    permission_classes = [CanReadEnhancements]
    pagination_class = EnhancementPagination
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_serializer_class(self) -> type:
        """Return the serializer for the action."""
        if self.action == "retrieve":
            return EnhancementDetailSerializer
        if self.action == "feedback":
            return FeedbackInSerializer
        return EnhancementListSerializer

    def get_queryset(self) -> QuerySet:
        """Return the caller's enhancements, filtered by the query parameters."""
        queryset = (
            Enhancement.objects.select_related("tenant", "ticket", "ticket__tenant")
            .annotate(
                helpful_count=Count("feedback", filter=Q(feedback__rating="helpful")),
                not_helpful_count=Count("feedback", filter=Q(feedback__rating="not_helpful")),
            )
            .order_by("-created_at", "-pk")
        )
        if isinstance(self.request.user, TokenUser):
            queryset = queryset.filter(tenant_id=self.request.user.token.tenant_id)
        if self.action == "list":
            queryset = self._filter(queryset)
        return queryset

    def get_object(self) -> Enhancement:
        """Return the enhancement, or answer not_found (also for another tenant's)."""
        try:
            return super().get_object()
        except Http404 as exc:
            # Raised as DRF's NotFound so the error handler gives it its code.
            raise exceptions.NotFound("No such enhancement.") from exc

    def _filter(self, queryset: QuerySet) -> QuerySet:
        params = EnhancementFilterSerializer(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        if "tenant" in data:
            queryset = queryset.filter(tenant__slug=data["tenant"])
        if "ticket" in data:
            queryset = queryset.filter(ticket__sdp_id=data["ticket"])
        if data.get("status"):
            queryset = queryset.filter(status__in=sorted(data["status"]))
        if "date" in data:
            start = timezone.make_aware(datetime.combine(data["date"], time.min))
            queryset = queryset.filter(created_at__gte=start)
            if data["date"] < date.max:  # 9999-12-31 has no next day (it raised OverflowError: a 500)
                queryset = queryset.filter(created_at__lt=start + timedelta(days=1))
        if "created_after" in data:
            queryset = queryset.filter(created_at__gte=data["created_after"])
        if "created_before" in data:
            queryset = queryset.filter(created_at__lt=data["created_before"])
        return queryset

    @extend_schema(
        request=FeedbackInSerializer,
        responses={201: FeedbackOutSerializer, 400: _INVALID, 401: _UNAUTHORIZED, 403: _FORBIDDEN, 404: _NOT_FOUND},
        summary="Rate an enhancement helpful or not helpful",
    )
    @action(detail=True, methods=["post"])
    def feedback(self, request: Request, pk: str | None = None) -> Response:
        """Record a rating of the enhancement."""
        enhancement = self.get_object()
        body = FeedbackInSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        # A support lead's session acts as that user; an API token speaks for its tenant, not a person.
        user = request.user if isinstance(request.user, User) else None
        feedback = services.feedback_create(
            enhancement_id=str(enhancement.pk),
            rating=body.validated_data["rating"],
            comment=body.validated_data["comment"],
            user=user,
            technician_email=body.validated_data["technician_email"],
            api_token=request.auth if isinstance(request.auth, ApiToken) else None,
        )
        return Response(FeedbackOutSerializer(feedback).data, status=status.HTTP_201_CREATED)


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI with its files served by this app (no CDN)."""

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        return reverse("api-docs-asset", args=[f"swagger-ui-dist/{filename}"])

    @staticmethod
    def _swagger_ui_favicon() -> str:
        return reverse("api-docs-asset", args=["swagger-ui-dist/favicon-32x32.png"])


class RedocView(SpectacularRedocView):
    """Redoc with its bundle served by this app (no CDN)."""

    @staticmethod
    def _redoc_standalone() -> str:
        return reverse("api-docs-asset", args=["redoc/bundles/redoc.standalone.js"])


@cache_control(public=True, max_age=86400)
def docs_asset(request: HttpRequest, path: str) -> HttpResponseBase:
    """Serve a Swagger UI or Redoc file from the drf-spectacular-sidecar package."""
    # Served here because the sidecar app is not in INSTALLED_APPS (collectstatic would not find it).
    if not path.startswith(("swagger-ui-dist/", "redoc/")):
        raise Http404
    return serve(request, path, document_root=str(DOCS_ASSETS))
