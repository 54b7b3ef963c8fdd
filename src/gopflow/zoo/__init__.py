"""The weights registry and loading of every learned model (codecs and precoders)."""
