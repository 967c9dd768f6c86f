"""The job lifecycle, from acceptance to a terminal state: one owner, narrow workers.

- :mod:`.service`: :class:`JobService`, the only writer of job state and the only reader for
  the API, the CLI's server and the lab proxy (every call takes the caller; another user's job
  is a 404). It owns every background task.
- :mod:`.context`: :class:`JobContext`, what the workers share instead of the service (config,
  store, clusters, templates, the submit and collect queues).
- Workers: :mod:`.submitter` (stage and sbatch), :mod:`.poller` (one status query per cycle),
  :mod:`.collector` (artifacts back, :mod:`.outcome` decides the end), :mod:`.lab_watcher`
  (lab readiness, idle cull, start timeout; rules and the proxy contract in :mod:`.labs`),
  :mod:`.retention` (artifact pruning). :mod:`.limits` checks per-user limits on create.
- :mod:`.scripts`: a job's batch script and its :class:`SubmitOptions`, from its resolved spec.
- :mod:`.clusters`: :class:`ClusterLink`, a cluster's transport, scheduler backend and poll
  bookkeeping.

Where upcoming work goes: data staging calls its connectors (top-level ``connectors/``) from the
submitter's stage-in and the collector's stage-out; a container runtime is a module in
``gateway/runtimes/``; a second scheduler is a module in ``gateway/scheduler/``; none of them
changes this package's structure.
"""
