"""hpcgw: notebook runs and JupyterLab sessions as Slurm batch jobs, behind one HTTP gateway."""

__version__ = "0.1.0"
