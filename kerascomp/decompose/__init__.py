"""Pure numpy maths of the compression methods. Nothing here imports Keras."""
