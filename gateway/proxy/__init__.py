"""The labs' reverse proxy: ``/labs/{job_id}/...`` to the JupyterLab of that job, owner only.

Lab traffic takes the fast path: :mod:`.front` owns the gateway's listening socket, reads each
request head (:mod:`.http1`), and relays as bytes what :mod:`.fastpath` admits (a credential
that names the caller now, the caller's own ready lab, the browser checks) over pooled
connections (:mod:`.upstream`); anything else goes to aiohttp. There :mod:`.labs` checks each
request through the job service's ``open_lab`` (with the caller the API authenticated) and
relays it (:mod:`.relay`, HTTP and WebSocket). Every connection to a lab is one on which the
lab's server proved its identity (:mod:`.identity`).
It is also the lifecycle's probe and activity clock (:class:`gateway.jobs.labs.LabProbe`); it
imports nothing from the API and never touches the store.
"""
