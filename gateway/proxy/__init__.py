"""The labs' reverse proxy: ``/labs/{job_id}/...`` to the JupyterLab of that job, owner only."""
