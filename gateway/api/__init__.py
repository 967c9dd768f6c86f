"""The HTTP API (design.md §3): aiohttp application, auth, problem+json, OpenAPI."""
