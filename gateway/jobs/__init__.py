"""The job service: lifecycle of gateway jobs from acceptance to their terminal state."""
