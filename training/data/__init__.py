"""Datasets: the platform's dataset folder format, video decoding and batching."""
