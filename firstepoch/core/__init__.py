"""The training core: Learner, callbacks, metrics, schedules, device, runs."""
