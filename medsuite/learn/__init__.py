"""Training core: Learner and callbacks, schedules, metrics with confidence intervals, models and bundles."""
