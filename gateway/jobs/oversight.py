"""What an admin sees and does across users: every user's jobs, and disabling a user.

The admin role is a flag on the user (``hpcgw user add --admin``, ``hpcgw user set``). An admin
reads every user's jobs (:func:`admin_jobs`); nothing here lets an admin act *as* another user.
Disabling a user (:func:`set_user`, run by the CLI whether or not the server runs) stops their
tokens and browser sessions at their next request (the store's token lookups check it) and
marks their unended labs to stop: the running gateway's poller sends ``scancel`` for a lab in
Slurm, its submitter ends one not yet submitted, and the lab ends ``cancelled`` with reason
``user_disabled``. Notebook runs go on: their results are the user's, and an admin who wants
them stopped cancels them in Slurm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import Forbidden, NotFound
from ..listing import JobQuery
from ..store import Store
from ..users import User
from ..webhooks.addresses import shown
from .outcome import DISABLED_STOP
from .views import job_view

log = logging.getLogger(__name__)


def require_admin(caller: User) -> None:
    """403 unless ``caller`` is an admin."""
    if not caller.admin:
        raise Forbidden("only an admin may do this (hpcgw user set NAME --admin)")


def admin_jobs(store: Store, caller: User, query: JobQuery) -> list[dict[str, Any]]:
    """Every user's jobs that match ``query`` (only ``query.user``'s if set), newest first,
    each row with ``user``: its owner's name. 403 unless ``caller`` is an admin; an unknown
    ``query.user`` lists nothing (as a user without jobs would)."""
    require_admin(caller)
    user_id = None
    if query.user is not None:
        try:
            user_id = store.users.get_user(query.user).id
        except NotFound:
            return []
    names = store.users.names()
    return [{**job, "user": names.get(job["user_id"], "")}
            for job in store.query_jobs(user_id, query)]


def admin_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job (a row with its owner's name as ``user``) as an admin sees it: the API's view
    plus ``user``, its webhook reduced to the URL's origin (a path or query may hold the
    receiver's own secret, which only the job's owner reads)."""
    view = {**job_view(job), "user": job["user"]}
    if view.get("webhook"):
        view["webhook"] = {**view["webhook"], "url": shown(view["webhook"]["url"])}
    return view


@dataclass
class UserChange:
    """What :func:`set_user` did: the user as it is now, and the labs it asked to stop."""

    user: User
    disabled: bool
    stopped_labs: list[str] = field(default_factory=list)


def set_user(store: Store, name: str, *, admin: bool | None = None,
             disabled: bool | None = None) -> UserChange:
    """Change ``name``'s admin flag and/or enabled state (None: unchanged). Disabling also
    asks the gateway to stop the user's unended labs (idempotent: asking twice is harmless)."""
    user = store.users.set_user(name, admin=admin, disabled=disabled)
    change = UserChange(user, store.users.is_disabled(user))
    if disabled:
        change.stopped_labs = store.request_stop(user.id, "lab", DISABLED_STOP)
        log.warning("user %s disabled; stopping labs %s", name, change.stopped_labs or "none")
    return change

