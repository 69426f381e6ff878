"""Benchmarking .tflite files: the LiteRT host runner."""
