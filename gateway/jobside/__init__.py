"""Code that runs inside jobs on the cluster (copied into each job's directory)."""
