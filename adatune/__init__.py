"""Gradient-based learning-rate tuning (HD, RTHO, MARTHE) and schedules (filled in by its issue)."""
