"""URL routes: the webhook, health, readiness, metrics, the read API and the admin."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from enhancements import api, webhooks
from enhancements.metrics import DatabaseCollector
from project import health, metrics

admin.site.site_header = "Ticket Enhancer"
admin.site.site_title = "Ticket Enhancer"
admin.site.index_title = "Review and operations"

router = SimpleRouter()
router.register("api/v1/enhancements", api.EnhancementViewSet, basename="enhancement")

urlpatterns = [
    path("webhook/servicedesk/<slug:tenant_slug>/", webhooks.servicedesk_webhook, name="servicedesk-webhook"),
    path("health", health.health, name="health"),
    path("api/v1/ready", health.ready, name="ready"),
    path("metrics", metrics.metrics_view, {"collectors": (DatabaseCollector(),)}, name="metrics"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", api.SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/redoc/", api.RedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/v1/docs/assets/<path:path>", api.docs_asset, name="api-docs-asset"),
    *router.urls,
    path("admin/", admin.site.urls),
]


def _not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": "not_found", "detail": "No such page."}, status=404)


def _server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": "server_error", "detail": "Something went wrong; the error was logged."}, status=500)


handler404 = _not_found
handler500 = _server_error
