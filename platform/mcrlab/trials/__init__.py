"""One trial-execution layer shared by sweeps, ablations and reproduce: trainables, resources,
the MLflow recorder, resume, storage trust and locks, and the one Ray session module."""
