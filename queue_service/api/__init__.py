"""The REST API: routers, dependencies, error mapping, metrics and server-sent events.

``queue_service.app.create_app`` assembles these. ``queue_service.api.schemas`` holds the request and
response bodies and imports nothing from FastAPI, so the typed client can use it too.
"""

__all__: list[str] = []
