"""Moving batches: the worker loop, one batch through source -> stage -> target, the processes of
`pipestate run`, the orchestrators' days and the demo."""
