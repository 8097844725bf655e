"""The floor's only route, at the same path shape as the real webhook."""

from django.urls import path

from bench.floor.views import floor_webhook

urlpatterns = [path("webhook/servicedesk/<slug:tenant_slug>/", floor_webhook)]
