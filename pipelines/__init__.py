"""Video decoding and one adapter per model family (keyed by the checkpoint's ``model_type``)."""
