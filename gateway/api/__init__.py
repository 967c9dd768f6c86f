"""The HTTP API (design.md §3) and the browser pages: routes, auth (bearer tokens, browser
sessions, XSRF), problem+json errors, the OpenAPI document.

Handlers reach jobs only through :class:`gateway.jobs.service.JobService` and users only
through :class:`gateway.accounts.Accounts` (never the store); they hand lab requests to the
lab proxy with the authenticated caller. :mod:`gateway.server` builds the application.
A new route group (the live portal's event stream, storage credentials) is one module here,
added in :func:`.app.add_routes`.
"""
