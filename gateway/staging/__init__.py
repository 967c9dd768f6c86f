"""Data staging on the gateway's side: users' storage servers (credentials, pinned host keys).

The transfers themselves are the connectors' (top-level ``connectors/``); this package holds
what the gateway keeps for them: :mod:`.keys` (SSH keys generated, checked, encrypted at rest),
:mod:`.hostkeys` (host keys parsed, fetched on first contact) and :mod:`.credentials` (the
service the API and the submitter use).
"""
