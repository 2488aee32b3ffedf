"""What is done to a pipeline's rows: populate, claims, operator actions, status and observation,
each a function of the shared `Context` (store, pipeline, clock, settings)."""
