"""Job entry points (transcode, ...): configs in, reports out; the CLI only parses."""
