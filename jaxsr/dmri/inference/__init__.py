"""Whole volumes through a trained model in bounded memory: tiled encoding, chunked decoding
and the memory plan."""
