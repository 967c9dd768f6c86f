"""Job webhooks: what the gateway sends to a job's ``webhook.url`` and where it may send it.

A job spec may carry ``"webhook": {"url": "https://..."}``; the gateway then POSTs each of the
job's state changes there (:mod:`gateway.jobs.webhooks` delivers them). This package holds the
parts with no job logic in them, used by the spec check, the API and the deliverer alike:

- :mod:`.signing`: each user's webhook secret (derived, never stored) and the
  ``Hpcgw-Signature`` header a receiver checks;
- :mod:`.addresses`: the URL's shape, and the address policy (no loopback, private, link-local
  or other non-public address unless the admin allows them), applied where the connection is
  made so that a DNS answer cannot change between the check and the connect;
- :mod:`.delivery`: one signed POST and the retry schedule.
"""
