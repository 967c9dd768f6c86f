"""Data staging connectors: how an input gets from a storage server to a job (design.md §2).

One small class per way (``copy``: scp before the job starts, checked; ``mount``: SSHFS on the
node for the job's life, to come), chosen by an input's ``mode`` and loaded by that name through
the ``hpcgw.connectors`` entry point group, so a site can add one. A connector only describes
the transfer; the job lifecycle (gateway/jobs/stager.py) runs it through the cluster's transport,
as the job's own user, with the storage server's key and pinned host key in the job's private
directory.
"""

from .base import Connector, StorageTarget, load_connector

__all__ = ["Connector", "StorageTarget", "load_connector"]
