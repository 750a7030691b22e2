"""Test helpers for naturelens and its users: tiny models, synthetic photos, bad inputs."""
