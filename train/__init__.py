"""Training entry points: router distillation and alternating router/expert tuning."""
