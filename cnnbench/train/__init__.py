"""The training engine: configuration, optimisers and schedules, the sharded jitted step, the loop,
checkpoints and run directories."""
