"""The labs' reverse proxy: ``/labs/{job_id}/...`` to the JupyterLab of that job, owner only.

:mod:`.labs` checks each request through the job service's ``open_lab`` (handed in as a
function, with the caller the API authenticated) and relays it (:mod:`.relay`, HTTP and
WebSocket) over connections on which the lab's server proved its identity (:mod:`.identity`).
It is also the lifecycle's probe and activity clock (:class:`gateway.jobs.labs.LabProbe`); it
imports nothing from the API and never touches the store.
"""
