"""The reusable part of training: data, objectives, rewards, teachers and rollouts, imported by
the thin entry scripts in ``train/``."""
