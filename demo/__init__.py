"""The offline demo of the whole journey (``make demo``)."""
