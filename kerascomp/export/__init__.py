"""Conversion to .tflite with the TF converter, quantisation and the LiteRT parity check."""
